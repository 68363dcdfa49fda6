package webhook

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"github.com/spf13/pflag"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

// Paths the webhook serves; the MutatingWebhookConfiguration in deploy/
// names them.
const (
	PodsPath      = "/mutate-pods"
	WorkloadsPath = "/mutate-workloads"
	// PolicyPathPrefix starts the paths of the policies' entries:
	// <prefix><policy>/<generation> (see PolicyPath).
	PolicyPathPrefix = PodsPath + "/policies/"
)

// ServerOptions are klock-webhook's flags.
type ServerOptions struct {
	Port            int
	CertDir         string
	KlockImage      string
	ImagePullPolicy string
	MetricsAddr     string
	ProbeAddr       string
	EnableHTTP2     bool
	Kubeconfig      string
	DefaultPlatform string
	ImageCacheSize  int

	// WebhookConfiguration is the MutatingWebhookConfiguration whose
	// policy entries follow the ClusterLockPolicies, and whose CA the
	// self-managed TLS keeps.
	WebhookConfiguration string
	// Policies applies ClusterLockPolicies; their CRD must be installed.
	Policies bool
	// LeaseAccess is off, policy or all: which wrapped workloads get a
	// Role for their Lease.
	LeaseAccess string

	// SelfManagedTLS: the webhook makes and rotates its own CA and serving
	// certificate in TLSSecret, writes them into CertDir, and puts the CA
	// into WebhookConfiguration.
	SelfManagedTLS bool
	TLSSecret      string // namespace/name
	DNSNames       []string
	// LeaderElect makes one replica at a time run the controllers (policy
	// entries and status, Lease access, certificate rotation); all serve.
	LeaderElect bool
	// LeaderElectionNamespace holds the leader election Lease. Default:
	// the TLS Secret's with self-managed TLS, else the pod's own.
	LeaderElectionNamespace string
}

// NewServerOptions returns the defaults.
func NewServerOptions() *ServerOptions {
	return &ServerOptions{
		Port:                 9443,
		CertDir:              "/tmp/k8s-webhook-server/serving-certs",
		ImagePullPolicy:      string(corev1.PullIfNotPresent),
		MetricsAddr:          ":8080",
		ProbeAddr:            ":8081",
		DefaultPlatform:      "linux/amd64",
		ImageCacheSize:       1024,
		WebhookConfiguration: "klock",
		Policies:             true,
		LeaseAccess:          LeaseAccessOff,
	}
}

// AddFlags binds the flags into o.
func (o *ServerOptions) AddFlags(fs *pflag.FlagSet) {
	fs.IntVar(&o.Port, "webhook-port", o.Port, "Port the admission webhook serves on.")
	fs.StringVar(&o.CertDir, "webhook-cert-path", o.CertDir, "Directory with tls.crt and tls.key; reloaded when they change.")
	fs.StringVar(&o.KlockImage, "klock-image", o.KlockImage, "Image holding /klock, copied into wrapped pods (required).")
	fs.StringVar(&o.ImagePullPolicy, "klock-image-pull-policy", o.ImagePullPolicy, "Pull policy of the klock init container: Always, IfNotPresent or Never.")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", o.MetricsAddr, "Address of the Prometheus metrics endpoint; 0 turns it off.")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", o.ProbeAddr, "Address of /healthz and /readyz.")
	fs.BoolVar(&o.EnableHTTP2, "enable-http2", o.EnableHTTP2, "Serve HTTP/2 (off by default: HTTP/2 rapid-reset attacks).")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig to use outside a cluster.")
	fs.StringVar(&o.DefaultPlatform, "default-platform", o.DefaultPlatform, "Platform whose ENTRYPOINT and CMD are read from multi-platform images, unless a pod's nodeSelector says otherwise.")
	fs.IntVar(&o.ImageCacheSize, "image-cache-size", o.ImageCacheSize, "How many image configs to keep, by digest.")
	fs.BoolVar(&o.SelfManagedTLS, "self-managed-tls", o.SelfManagedTLS, "Make and rotate the CA and serving certificate in --tls-secret, and put the CA into --webhook-configuration.")
	fs.StringVar(&o.TLSSecret, "tls-secret", o.TLSSecret, "With --self-managed-tls: the Secret (namespace/name) that keeps the certificates.")
	fs.StringSliceVar(&o.DNSNames, "dns-names", o.DNSNames, "With --self-managed-tls: the names the serving certificate is for, such as klock-webhook.klock-system.svc.")
	fs.StringVar(&o.WebhookConfiguration, "webhook-configuration", o.WebhookConfiguration, "The MutatingWebhookConfiguration to keep in step with the ClusterLockPolicies, and whose caBundle --self-managed-tls keeps.")
	fs.BoolVar(&o.Policies, "policies", o.Policies, "Apply ClusterLockPolicies (their CRD must be installed).")
	fs.StringVar(&o.LeaseAccess, "lease-access", o.LeaseAccess, "Keep a Role and RoleBinding for the Lease of each wrapped workload: off, policy (where the ClusterLockPolicy sets grantLeaseAccess) or all.")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "Let one replica at a time run the controllers; every replica serves.")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", o.LeaderElectionNamespace, "Namespace of the leader election Lease (default: the --tls-secret's with --self-managed-tls, else the pod's own).")
}

// Validate checks the flags.
func (o *ServerOptions) Validate() error {
	var errs []error
	if o.KlockImage == "" {
		errs = append(errs, errors.New("--klock-image is required: the image that holds /klock, such as ghcr.io/klock-io/klock:v0.1.0"))
	}
	switch corev1.PullPolicy(o.ImagePullPolicy) {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("--klock-image-pull-policy %q: give Always, IfNotPresent or Never", o.ImagePullPolicy))
	}
	if _, err := v1.ParsePlatform(o.DefaultPlatform); err != nil {
		errs = append(errs, fmt.Errorf("--default-platform %q: give os/arch[/variant], such as linux/amd64: %w", o.DefaultPlatform, err))
	}
	if o.ImageCacheSize < 1 {
		errs = append(errs, fmt.Errorf("--image-cache-size %d: give at least 1", o.ImageCacheSize))
	}
	if o.SelfManagedTLS {
		if ns, name, ok := strings.Cut(o.TLSSecret, "/"); !ok || ns == "" || name == "" {
			errs = append(errs, fmt.Errorf("--tls-secret %q: give namespace/name, such as klock-system/klock-webhook-tls", o.TLSSecret))
		}
		if len(o.DNSNames) == 0 {
			errs = append(errs, errors.New("--dns-names is required with --self-managed-tls: the Service's names, such as klock-webhook.klock-system.svc"))
		}
	}
	if o.WebhookConfiguration == "" && (o.SelfManagedTLS || o.Policies) {
		errs = append(errs, errors.New("--webhook-configuration is required with --policies or --self-managed-tls: the name of klock's MutatingWebhookConfiguration, such as klock"))
	}
	switch o.LeaseAccess {
	case LeaseAccessOff, LeaseAccessPolicy, LeaseAccessAll:
		if o.LeaseAccess != LeaseAccessOff && !o.Policies {
			errs = append(errs, fmt.Errorf("--lease-access %s needs --policies", o.LeaseAccess))
		}
	default:
		errs = append(errs, fmt.Errorf("--lease-access %q: give off, policy or all", o.LeaseAccess))
	}
	if o.Port < 1 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("--webhook-port %d: give a port from 1 to 65535", o.Port))
	}
	return errors.Join(errs...)
}

// Scheme knows the kinds the webhook decodes and reads.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(s), klockv1alpha1.AddToScheme(s)); err != nil {
		panic(err) // a programming error
	}
	return s
}

// Run serves the webhook until ctx ends.
func Run(ctx context.Context, o *ServerOptions, config *rest.Config) error {
	if err := o.Validate(); err != nil {
		return err
	}
	tlsOpts := []func(*tls.Config){}
	if !o.EnableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	scheme := Scheme()
	server := webhook.NewServer(webhook.Options{Port: o.Port, CertDir: o.CertDir, TLSOpts: tlsOpts})
	mo := ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress: o.ProbeAddr,
		WebhookServer:          server,
		// Run may be called more than once in a process (replicas in one
		// test, a program embedding the webhook); metrics of controllers
		// of one name are then shared, which is harmless here.
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr(true)},
	}
	// The ID predates the controllers, when the Lease elected the
	// certificate rotator only; a new one would let an old and a new
	// replica both rotate during an upgrade.
	mo.LeaderElection, mo.LeaderElectionID, mo.LeaderElectionNamespace = o.LeaderElect, "klock-webhook-certs", o.LeaderElectionNamespace
	// Watch the one webhook configuration, the one Secret and the Roles the
	// webhook made, not all; keep of each workload only what policies read.
	mo.Cache.ByObject = map[client.Object]cache.ByObject{
		&admissionregistrationv1.MutatingWebhookConfiguration{}: {Field: fields.OneTermEqualSelector("metadata.name", o.WebhookConfiguration)},
		&rbacv1.Role{}:        {Label: labels.SelectorFromSet(managedBy())},
		&rbacv1.RoleBinding{}: {Label: labels.SelectorFromSet(managedBy())},
	}
	for _, obj := range workloadObjects() {
		mo.Cache.ByObject[obj] = cache.ByObject{Transform: trimWorkload}
	}
	var secret types.NamespacedName
	if o.SelfManagedTLS {
		ns, name, _ := strings.Cut(o.TLSSecret, "/")
		secret = types.NamespacedName{Namespace: ns, Name: name}
		mo.LeaderElectionNamespace = cmp.Or(o.LeaderElectionNamespace, ns)
		mo.Cache.ByObject[&corev1.Secret{}] = cache.ByObject{Namespaces: map[string]cache.Config{ns: {}}, Field: fields.OneTermEqualSelector("metadata.name", name)}
	}
	mgr, err := ctrl.NewManager(config, mo)
	if err != nil {
		return fmt.Errorf("cannot set up the webhook server: %w", err)
	}
	opts := Options{Image: o.KlockImage, ImagePullPolicy: corev1.PullPolicy(o.ImagePullPolicy)}
	// A direct client, not the manager's cache: pull secrets are read for
	// the pods that need them, not watched cluster-wide.
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	platform, _ := v1.ParsePlatform(o.DefaultPlatform) // validated above
	images := NewRegistryResolver(clientset, *platform, o.ImageCacheSize, nil)
	pods := NewPodHandler(scheme, opts, images, NewLeaseAccess(clientset))
	if o.Policies {
		// Every replica, leader or not, reads policies and namespaces
		// from its cache: start those informers with the cache, and be
		// ready only once they have synced (see below).
		ns := &metav1.PartialObjectMetadata{}
		ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
		for _, obj := range []client.Object{&klockv1alpha1.ClusterLockPolicy{}, ns} {
			if _, err := mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false)); err != nil {
				return fmt.Errorf("cannot watch %T: %w", obj, err)
			}
		}
		if err := mgr.AddReadyzCheck("policies", func(*http.Request) error {
			synced, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			if !mgr.GetCache().WaitForCacheSync(synced) {
				return errors.New("the ClusterLockPolicies and namespaces are not in the cache yet")
			}
			return nil
		}); err != nil {
			return err
		}
		pods.WithPolicies(NewClusterPolicies(mgr.GetClient(), mgr.GetAPIReader()))
		if err := (&PolicyReconciler{Client: mgr.GetClient(), WebhookConfiguration: o.WebhookConfiguration}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("cannot set up the ClusterLockPolicy controller: %w", err)
		}
	}
	if o.LeaseAccess != LeaseAccessOff {
		if err := (&LeaseAccessReconciler{Client: mgr.GetClient(), API: mgr.GetAPIReader(), Mode: o.LeaseAccess, WebhookConfiguration: o.WebhookConfiguration}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("cannot set up the Lease access controller: %w", err)
		}
	}
	podsHook := &admission.Webhook{Handler: pods}
	server.Register(PodsPath, podsHook)
	if o.Policies {
		server.Register(PolicyPathPrefix, RequirePolicyFromPath(podsHook))
	}
	server.Register(WorkloadsPath, &admission.Webhook{Handler: NewWorkloadHandler(scheme)})
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	// Ready once the server serves, which with self-managed TLS is once the
	// certificates are in CertDir.
	if err := mgr.AddReadyzCheck("webhook", server.StartedChecker()); err != nil {
		return err
	}
	if !o.SelfManagedTLS {
		if err := mgr.Add(server); err != nil {
			return err
		}
		return mgr.Start(ctx)
	}

	if err := rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:             secret,
		CertDir:               o.CertDir,
		CAName:                "klock-webhook-ca",
		CAOrganization:        "klock",
		DNSName:               o.DNSNames[0],
		ExtraDNSNames:         o.DNSNames[1:],
		IsReady:               make(chan struct{}), // closed on the leader only: see below
		Webhooks:              []rotator.WebhookInfo{{Name: o.WebhookConfiguration, Type: rotator.Mutating}},
		RequireLeaderElection: o.LeaderElect,
	}); err != nil {
		return fmt.Errorf("cannot set up certificate rotation: %w", err)
	}
	// The server reads the certificates when it starts: start it once they
	// are in CertDir, where the kubelet mounts the Secret the leader's
	// rotator fills. Every replica serves, leader or not.
	serverErr := make(chan error, 1)
	go func() {
		for !certsPresent(o.CertDir) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		serverErr <- mgr.Add(server)
	}()
	err = mgr.Start(ctx)
	select {
	case addErr := <-serverErr:
		return errors.Join(err, addErr)
	default:
		return err
	}
}

// certsPresent reports whether dir holds a usable serving certificate.
func certsPresent(dir string) bool {
	_, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	return err == nil
}

// Package server runs klock-webhook: from its flags (Options), it builds a
// controller-runtime manager, serves the admission handlers of package
// webhook at their paths on every replica, runs the controllers on the
// leader, and serves TLS from a certificate directory, kept there by
// cert-manager or a mounted Secret, or made and rotated by the webhook
// itself (--self-managed-tls). Run is the whole program but for parsing
// flags and loading the kubeconfig, which cmd/klock-webhook does.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook"
	"github.com/klock-io/klock/webhook/gate"
	"github.com/klock-io/klock/webhook/images"
	"github.com/klock-io/klock/webhook/leaseaccess"
	"github.com/klock-io/klock/webhook/policy"
	"github.com/klock-io/klock/webhook/wrap"
)

// What the pod handler is given; the compiler checks here that each
// implementation fits its interface.
var (
	_ webhook.ImageResolver  = (*images.Resolver)(nil)
	_ webhook.AccessReviewer = (*leaseaccess.Reviewer)(nil)
	_ webhook.PolicySource   = (*policy.ClusterPolicies)(nil)
)

// Run serves the webhook until ctx ends.
func Run(ctx context.Context, o *Options, config *rest.Config) error {
	if err := o.Validate(); err != nil {
		return err
	}
	server := ctrlwebhook.NewServer(ctrlwebhook.Options{Port: o.Port, CertDir: o.CertDir, TLSOpts: tlsOptions(o)})
	mgr, err := ctrl.NewManager(config, managerOptions(o, server))
	if err != nil {
		return fmt.Errorf("cannot set up the webhook server: %w", err)
	}
	if err := addAdmission(ctx, mgr, server, o, config); err != nil {
		return err
	}
	if err := addControllers(mgr, o); err != nil {
		return err
	}
	if err := addChecks(mgr, server); err != nil {
		return err
	}
	if o.SelfManagedTLS {
		return startWithSelfManagedTLS(ctx, mgr, server, o)
	}
	if err := mgr.Add(server); err != nil {
		return err
	}
	return mgr.Start(ctx)
}

// tlsOptions turn HTTP/2 off unless asked for: HTTP/2 rapid-reset attacks.
func tlsOptions(o *Options) []func(*tls.Config) {
	if o.EnableHTTP2 {
		return nil
	}
	return []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}
}

// managerOptions configure the manager: metrics, probes, leader election,
// and a cache narrowed to what the webhook reads.
func managerOptions(o *Options, server ctrlwebhook.Server) ctrl.Options {
	mo := ctrl.Options{
		Scheme:                 webhook.Scheme(),
		Metrics:                metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress: o.ProbeAddr,
		WebhookServer:          server,
		// Run may be called more than once in a process (replicas in one
		// test, a program embedding the webhook); metrics of controllers
		// of one name are then shared, which is harmless here.
		Controller: ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
	}
	// The ID predates the controllers, when the Lease elected the
	// certificate rotator only; a new one would let an old and a new
	// replica both rotate during an upgrade.
	mo.LeaderElection, mo.LeaderElectionID, mo.LeaderElectionNamespace = o.LeaderElect, "klock-webhook-certs", o.LeaderElectionNamespace
	// A replica that stops gives the leadership up at once, so that the
	// next leader adopts the gate controller's reservations before they
	// expire. Safe because Run's caller exits when Run returns.
	mo.LeaderElectionReleaseOnCancel = true
	// Watch the one webhook configuration, the one Secret and the Roles the
	// webhook made, not all; keep of each workload only what policies read.
	managed := labels.SelectorFromSet(labels.Set{wrap.LabelManagedBy: wrap.ManagedByWebhook})
	mo.Cache.ByObject = map[client.Object]cache.ByObject{
		&admissionregistrationv1.MutatingWebhookConfiguration{}: {Field: fields.OneTermEqualSelector("metadata.name", o.WebhookConfiguration)},
		&rbacv1.Role{}:        {Label: managed},
		&rbacv1.RoleBinding{}: {Label: managed},
		&corev1.Pod{}:         gatedPods(o),
	}
	for _, obj := range policy.WorkloadObjects() {
		mo.Cache.ByObject[obj] = cache.ByObject{Transform: policy.TrimWorkload}
	}
	if o.SelfManagedTLS {
		secret := tlsSecret(o)
		mo.LeaderElectionNamespace = cmp.Or(o.LeaderElectionNamespace, secret.Namespace)
		mo.Cache.ByObject[&corev1.Secret{}] = cache.ByObject{Namespaces: map[string]cache.Config{secret.Namespace: {}}, Field: fields.OneTermEqualSelector("metadata.name", secret.Name)}
	}
	return mo
}

// gatedPods is the cache of the gate controller's pods: those the webhook
// gated, without their managed fields (anyone may label a pod so), and
// with --gating-namespaces only in those, so that the controller needs
// pods list and watch there only, not in every namespace (RBAC cannot
// grant by label).
func gatedPods(o *Options) cache.ByObject {
	pods := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{wrap.LabelGated: "true"}), Transform: cache.TransformStripManagedFields()}
	if len(o.GatingNamespaces) > 0 {
		pods.Namespaces = map[string]cache.Config{}
		for _, ns := range o.GatingNamespaces {
			pods.Namespaces[ns] = cache.Config{}
		}
	}
	return pods
}

// tlsSecret is --tls-secret, which Validate checked.
func tlsSecret(o *Options) types.NamespacedName {
	ns, name, _ := strings.Cut(o.TLSSecret, "/")
	return types.NamespacedName{Namespace: ns, Name: name}
}

// addAdmission serves the pod and workload handlers at their paths, and
// the policies' entries when policies are on.
func addAdmission(ctx context.Context, mgr ctrl.Manager, server ctrlwebhook.Server, o *Options, config *rest.Config) error {
	// A direct client, not the manager's cache: pull secrets are read for
	// the pods that need them, not watched cluster-wide.
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	platform, _ := v1.ParsePlatform(o.DefaultPlatform) // validated by Run
	opts := o.wrapOptions()
	reviewer := leaseaccess.NewReviewer(clientset)
	if o.LeaseAccess != leaseaccess.ModeOff {
		reviewer.WithLeaseAccess() // the webhook may get Leases
	}
	resolver := images.NewResolver(pullSecretsClient(clientset, o.ReadPullSecrets), *platform, o.ImageCacheSize, images.WithTimeout(o.ImageTimeout),
		images.WithInsecureRegistries(o.InsecureRegistries), images.WithAuthHosts(o.RegistryAuthHosts), images.WithAPIServer(config.Host))
	pods := webhook.NewPodHandler(mgr.GetScheme(), opts, resolver, reviewer)
	if o.Policies {
		if err := watchPolicies(ctx, mgr); err != nil {
			return err
		}
		pods.WithPolicies(policy.NewClusterPolicies(mgr.GetClient(), mgr.GetAPIReader()))
	}
	podsHook := &admission.Webhook{Handler: pods}
	server.Register(webhook.PodsPath, podsHook)
	if o.Policies {
		server.Register(webhook.PolicyPathPrefix, webhook.RequirePolicyFromPath(podsHook))
	}
	server.Register(webhook.WorkloadsPath, &admission.Webhook{Handler: webhook.NewWorkloadHandler(mgr.GetScheme())})
	return nil
}

// pullSecretsClient is what the image resolver reads pull secrets with:
// clientset, or nil with read false, so that the resolver goes to
// registries anonymously and the webhook needs no RBAC on Secrets.
func pullSecretsClient(clientset kubernetes.Interface, read bool) kubernetes.Interface {
	if read {
		return clientset
	}
	return nil
}

// watchPolicies starts, with the cache, the informers of what the pod
// handler reads on every replica, leader or not: policies and namespaces.
// The replica is ready only once they have synced.
func watchPolicies(ctx context.Context, mgr ctrl.Manager) error {
	ns := &metav1.PartialObjectMetadata{}
	ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	for _, obj := range []client.Object{&klockv1alpha1.ClusterLockPolicy{}, ns} {
		if _, err := mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false)); err != nil {
			return fmt.Errorf("cannot watch %T: %w", obj, err)
		}
	}
	return mgr.AddReadyzCheck("policies", func(*http.Request) error {
		synced, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(synced) {
			return errors.New("the ClusterLockPolicies and namespaces are not in the cache yet")
		}
		return nil
	})
}

// addControllers sets up the controllers, which run on the leader only:
// each is a package of its own, and a new one is added here.
func addControllers(mgr ctrl.Manager, o *Options) error {
	if o.Policies {
		if err := (&policy.Reconciler{Client: mgr.GetClient(), WebhookConfiguration: o.WebhookConfiguration}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("cannot set up the ClusterLockPolicy controller: %w", err)
		}
	}
	if o.LeaseAccess != leaseaccess.ModeOff {
		if err := (&leaseaccess.Reconciler{Client: mgr.GetClient(), API: mgr.GetAPIReader(), Mode: o.LeaseAccess, WebhookConfiguration: o.WebhookConfiguration, Wrap: o.wrapOptions()}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("cannot set up the Lease access controller: %w", err)
		}
	}
	if o.Gating != wrap.GatingOff {
		clientset, err := kubernetes.NewForConfig(mgr.GetConfig())
		if err != nil {
			return err
		}
		if err := (&gate.Reconciler{
			Client: mgr.GetClient(), API: mgr.GetAPIReader(), Config: mgr.GetConfig(),
			Events: mgr.GetEventRecorder("klock-gate"), Wrap: o.wrapOptions(), Access: leaseaccess.NewReviewer(clientset),
		}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("cannot set up the gate controller: %w", err)
		}
	}
	return nil
}

// addChecks adds /healthz, and to /readyz the webhook server: ready once
// it serves, which with self-managed TLS is once the certificates are in
// CertDir.
func addChecks(mgr ctrl.Manager, server ctrlwebhook.Server) error {
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("webhook", server.StartedChecker())
}

// startWithSelfManagedTLS runs the manager with a certificate rotator,
// which on the leader makes the CA and serving certificate in the TLS
// Secret and puts the CA into the webhook configuration. Every replica,
// leader or not, starts serving once the certificates are in CertDir.
func startWithSelfManagedTLS(ctx context.Context, mgr ctrl.Manager, server ctrlwebhook.Server, o *Options) error {
	if err := rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:             tlsSecret(o),
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
	err := mgr.Start(ctx)
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

// wrapOptions is how the webhook wraps pods. Running in the cluster, it
// pins klock in every wrapped pod to the API server and CA the webhook
// itself uses there, so that nothing in the pod (a KUBECONFIG, a
// ~/.kube/config in the image, KUBERNETES_SERVICE_HOST) can point klock at
// a server of the pod author's that grants every lock.
func (o *Options) wrapOptions() wrap.Options {
	opts := wrap.Options{Image: o.KlockImage, ImagePullPolicy: corev1.PullPolicy(o.ImagePullPolicy), Gating: o.Gating, GatingNamespaces: o.GatingNamespaces}
	if ic, err := rest.InClusterConfig(); err == nil {
		if ca, err := os.ReadFile(ic.TLSClientConfig.CAFile); err == nil {
			opts.APIServer, opts.APICA = ic.Host, string(ca)
		}
	}
	return opts
}

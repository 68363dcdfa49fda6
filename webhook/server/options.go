package server

import (
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/klock-io/klock/webhook/images"
	"github.com/klock-io/klock/webhook/leaseaccess"
	"github.com/klock-io/klock/webhook/wrap"
)

// Options are klock-webhook's flags.
type Options struct {
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
	// ImageTimeout bounds reading one image's ENTRYPOINT and CMD; it
	// must stay below the webhook's timeoutSeconds.
	ImageTimeout time.Duration
	// InsecureRegistries are the registries (host or host:port) read
	// over plain HTTP, and the only ones reachable on loopback.
	InsecureRegistries []string
	// RegistryAuthHosts are hosts (host or host:port) a registry's token
	// realm may be on, besides its own (and auth.docker.io for Docker
	// Hub).
	RegistryAuthHosts []string
	// ReadPullSecrets reads a pod's imagePullSecrets and its service
	// account's to read its images' ENTRYPOINT and CMD. Off, the webhook
	// reads no Secret nor ServiceAccount (and needs no RBAC for them):
	// only images it may pull anonymously can have their command read.
	ReadPullSecrets bool

	// WebhookConfiguration is the MutatingWebhookConfiguration whose
	// policy entries follow the ClusterLockPolicies, and whose CA the
	// self-managed TLS keeps.
	WebhookConfiguration string
	// Policies applies ClusterLockPolicies; their CRD must be installed.
	Policies bool
	// LeaseAccess is off, policy or all: which wrapped workloads get a
	// Role for their Lease.
	LeaseAccess string
	// Gating is which wrapped pods wait for their lock SchedulingGated
	// (wrap.Gating): off, opt-in or default. The gate controller, which
	// lets them through, runs unless it is off.
	Gating wrap.Gating
	// GatingNamespaces, when not empty, are the only namespaces where the
	// gate controller watches and lets pods through, and whose pods the
	// webhook gates (wrap.Options.GatingNamespaces): the controller then
	// needs pods list and watch only there. Empty: every namespace.
	GatingNamespaces []string

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

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		Port:                 9443,
		CertDir:              "/tmp/k8s-webhook-server/serving-certs",
		ImagePullPolicy:      string(corev1.PullIfNotPresent),
		MetricsAddr:          ":8080",
		ProbeAddr:            ":8081",
		DefaultPlatform:      "linux/amd64",
		ImageCacheSize:       1024,
		ImageTimeout:         images.DefaultTimeout,
		ReadPullSecrets:      true,
		WebhookConfiguration: "klock",
		Policies:             true,
		LeaseAccess:          leaseaccess.ModeOff,
		Gating:               wrap.GatingOptIn,
	}
}

// AddFlags binds the flags into o.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
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
	fs.DurationVar(&o.ImageTimeout, "image-timeout", o.ImageTimeout, "How long reading an image's ENTRYPOINT and CMD from its registry may take; keep it below the webhook's timeoutSeconds.")
	fs.BoolVar(&o.ReadPullSecrets, "read-pull-secrets", o.ReadPullSecrets, "Read a pod's imagePullSecrets and its service account's (get secrets and serviceaccounts in every namespace) to read its images' ENTRYPOINT and CMD; off, only images pullable anonymously can be read.")
	fs.StringSliceVar(&o.InsecureRegistries, "insecure-registry", o.InsecureRegistries, "Registries (host, any port, or host:port; repeatable or comma-separated) whose ENTRYPOINT and CMD may be read over plain HTTP; the only ones reachable on a loopback address. Others are read over HTTPS only.")
	fs.StringSliceVar(&o.RegistryAuthHosts, "registry-auth-host", o.RegistryAuthHosts, "Hosts (host or host:port; repeatable or comma-separated) a registry may send the webhook to for a token, besides the registry's own host; auth.docker.io is built in for Docker Hub.")
	fs.BoolVar(&o.SelfManagedTLS, "self-managed-tls", o.SelfManagedTLS, "Make and rotate the CA and serving certificate in --tls-secret, and put the CA into --webhook-configuration.")
	fs.StringVar(&o.TLSSecret, "tls-secret", o.TLSSecret, "With --self-managed-tls: the Secret (namespace/name) that keeps the certificates.")
	fs.StringSliceVar(&o.DNSNames, "dns-names", o.DNSNames, "With --self-managed-tls: the names the serving certificate is for, such as klock-webhook.klock-system.svc.")
	fs.StringVar(&o.WebhookConfiguration, "webhook-configuration", o.WebhookConfiguration, "The MutatingWebhookConfiguration to keep in step with the ClusterLockPolicies, and whose caBundle --self-managed-tls keeps.")
	fs.BoolVar(&o.Policies, "policies", o.Policies, "Apply ClusterLockPolicies (their CRD must be installed).")
	fs.StringVar(&o.LeaseAccess, "lease-access", o.LeaseAccess, "Keep a Role and RoleBinding for the Lease of each wrapped workload: off, policy (where the ClusterLockPolicy sets grantLeaseAccess) or all.")
	fs.StringVar((*string)(&o.Gating), "gating", string(o.Gating), "Which wrapped pods wait for their lock unscheduled, behind the scheduling gate klock.io/lock: off (none; a pod annotated klock.io/gate: \"true\" is denied), opt-in (those annotated klock.io/gate: \"true\") or default (all but those annotated klock.io/gate: \"false\").")
	fs.StringSliceVar(&o.GatingNamespaces, "gating-namespaces", o.GatingNamespaces, "Unless --gating=off: the only namespaces (comma-separated) where the gate controller watches pods and lets them through, and whose pods are gated; elsewhere a pod annotated klock.io/gate: \"true\" is denied. Empty: every namespace.")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect, "Let one replica at a time run the controllers; every replica serves.")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", o.LeaderElectionNamespace, "Namespace of the leader election Lease (default: the --tls-secret's with --self-managed-tls, else the pod's own).")
}

// Validate checks the flags.
func (o *Options) Validate() error {
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
	if o.ImageTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--image-timeout %s: give a positive duration below the webhook's timeoutSeconds, such as 3s", o.ImageTimeout))
	}
	for _, h := range o.InsecureRegistries {
		if _, _, err := images.ParseHost(h); err != nil {
			errs = append(errs, fmt.Errorf("--insecure-registry: %w: give host or host:port, as in an image reference, such as 10.0.0.5:5000", err))
		}
	}
	for _, h := range o.RegistryAuthHosts {
		if _, _, err := images.ParseHost(h); err != nil {
			errs = append(errs, fmt.Errorf("--registry-auth-host: %w: give host or host:port, such as gitlab.com", err))
		}
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
	case leaseaccess.ModeOff, leaseaccess.ModePolicy, leaseaccess.ModeAll:
		if o.LeaseAccess != leaseaccess.ModeOff && !o.Policies {
			errs = append(errs, fmt.Errorf("--lease-access %s needs --policies", o.LeaseAccess))
		}
	default:
		errs = append(errs, fmt.Errorf("--lease-access %q: give off, policy or all", o.LeaseAccess))
	}
	switch o.Gating {
	case wrap.GatingOff, wrap.GatingOptIn, wrap.GatingDefault:
	default:
		errs = append(errs, fmt.Errorf("--gating %q: give off, opt-in or default", o.Gating))
	}
	for _, ns := range o.GatingNamespaces {
		if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--gating-namespaces: %q is not a namespace name: give namespace names (DNS-1123 labels: lowercase letters, digits and '-', at most 63 characters), comma-separated, such as team-a,team-b", ns))
		}
	}
	if o.Port < 1 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("--webhook-port %d: give a port from 1 to 65535", o.Port))
	}
	return errors.Join(errs...)
}

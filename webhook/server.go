package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Paths the webhook serves; the MutatingWebhookConfiguration in deploy/
// names them.
const (
	PodsPath      = "/mutate-pods"
	WorkloadsPath = "/mutate-workloads"
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
}

// NewServerOptions returns the defaults.
func NewServerOptions() *ServerOptions {
	return &ServerOptions{
		Port:            9443,
		CertDir:         "/tmp/k8s-webhook-server/serving-certs",
		ImagePullPolicy: string(corev1.PullIfNotPresent),
		MetricsAddr:     ":8080",
		ProbeAddr:       ":8081",
		DefaultPlatform: "linux/amd64",
		ImageCacheSize:  1024,
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
	if o.Port < 1 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("--webhook-port %d: give a port from 1 to 65535", o.Port))
	}
	return errors.Join(errs...)
}

// Scheme knows the kinds the webhook decodes.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
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
	mgr, err := ctrl.NewManager(config, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress: o.ProbeAddr,
		WebhookServer:          webhook.NewServer(webhook.Options{Port: o.Port, CertDir: o.CertDir, TLSOpts: tlsOpts}),
	})
	if err != nil {
		return fmt.Errorf("cannot set up the webhook server: %w", err)
	}
	opts := Options{Image: o.KlockImage, ImagePullPolicy: corev1.PullPolicy(o.ImagePullPolicy)}
	// A direct client, not the manager's cache: pull secrets are read for
	// the pods that need them, not watched cluster-wide.
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	platform, _ := v1.ParsePlatform(o.DefaultPlatform) // validated above
	images := NewRegistryResolver(client, *platform, o.ImageCacheSize, nil)
	server := mgr.GetWebhookServer()
	server.Register(PodsPath, &admission.Webhook{Handler: NewPodHandler(scheme, opts, images, NewLeaseAccess(client))})
	server.Register(WorkloadsPath, &admission.Webhook{Handler: NewWorkloadHandler(scheme)})
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("webhook", server.StartedChecker()); err != nil {
		return err
	}
	return mgr.Start(ctx)
}

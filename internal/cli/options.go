package cli

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/klock-io/klock/klock"
)

// Environment variables klock reads.
const (
	EnvNamespace = "KLOCK_NAMESPACE"
	EnvIdentity  = "KLOCK_IDENTITY"
	// EnvAPICA holds the only CA klock trusts with --api-server (PEM).
	EnvAPICA = "KLOCK_API_CA"
)

// Environment variables klock sets for the command.
const (
	EnvLease          = "KLOCK_LEASE"
	EnvLeaseNamespace = "KLOCK_LEASE_NAMESPACE"
	EnvHolderIdentity = "KLOCK_HOLDER_IDENTITY"
	EnvFencingToken   = "KLOCK_FENCING_TOKEN"
)

var commandEnv = []string{EnvLease, EnvLeaseNamespace, EnvHolderIdentity, EnvFencingToken}

// serviceAccountNamespaceFile is where a pod finds its own namespace, and
// serviceAccountTokenFile its token.
var (
	serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
	serviceAccountTokenFile     = "/var/run/secrets/kubernetes.io/serviceaccount/token"
)

// Options holds everything the command line says. Flags bind into it; Run
// takes it.
type Options struct {
	Lease            string
	Namespace        string
	Identity         string
	GenerateIdentity bool
	Kubeconfig       string
	APIServer        string
	Labels           map[string]string

	Wait             time.Duration // 0: wait as long as it takes
	NonBlock         bool
	ConflictExitCode uint8

	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	Cleanup       bool

	MaxHolders int
	Order      klock.Order
	QueueTTL   time.Duration

	Signal    syscall.Signal
	KillAfter time.Duration

	Debug   bool
	Version bool
	Help    bool

	// Command is the argv to run, verbatim.
	Command []string
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	// The lease timings stay zero unless given: the klock package derives
	// the missing ones from those given.
	return &Options{
		Lease:            "klock",
		ConflictExitCode: 1,
		Signal:           syscall.SIGTERM,
		MaxHolders:       1,
		Order:            klock.OrderFIFO,
	}
}

// AddFlags binds the flags into o. Names and short forms follow the klock
// tool this one replaces; --unlock, --verbose and --timeout are aliases.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&o.Lease, "lease", "l", o.Lease, "Name of the Lease to hold while the command runs.")
	fs.StringVarP(&o.Namespace, "namespace", "n", o.Namespace, "Namespace of the Lease. Default: $"+EnvNamespace+", else the pod's own namespace, else the kubeconfig context's, else \"default\".")
	fs.StringVarP(&o.Identity, "identity", "i", o.Identity, "Holder identity. Default: $"+EnvIdentity+", else one unique to this process.\nProcesses given the same identity share the lock (re-entrant).")
	fs.BoolVarP(&o.GenerateIdentity, "generate-identity", "g", o.GenerateIdentity, "Use an identity unique to this process even if $"+EnvIdentity+" is set.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig. Default: $KUBECONFIG, else ~/.kube/config, else the pod's service account.")
	fs.StringVar(&o.APIServer, "api-server", o.APIServer, "Talk to the API server at this https URL with the pod's service account token, trusting only the CA in\n$"+EnvAPICA+"; --kubeconfig, $KUBECONFIG, ~/.kube/config and $KUBERNETES_SERVICE_HOST are then ignored.\nThe webhook sets it in the pods it wraps, so that nothing in the pod can point klock elsewhere.")
	fs.Var(labelsValue{&o.Labels}, "labels", "Labels to put on the Lease, as key=value,key2=value2. app.kubernetes.io/managed-by=klock is always set on creation.")

	fs.VarP(durationValue{&o.Wait}, "wait", "w", "Give up when the lock is not acquired within this long (exit with --conflict-exit-code). 0 waits as long as it takes.")
	fs.Var(durationValue{&o.Wait}, "timeout", "Same as --wait.")
	fs.BoolVar(&o.NonBlock, "nonblock", o.NonBlock, "Give up at once if the lock is held (exit with --conflict-exit-code).")
	fs.Uint8VarP(&o.ConflictExitCode, "conflict-exit-code", "E", o.ConflictExitCode, "Exit status when the lock was not acquired (--wait elapsed, or --nonblock).")

	fs.Var(durationValue{&o.LeaseDuration}, "lease-duration", "How long others wait for a silent holder before they take the lock over (whole seconds).\nDefault 15s; 1.5 times --renew-deadline, rounded up, when only that is given and is over 10s.")
	fs.Var(durationValue{&o.RenewDeadline}, "renew-deadline", "How long the holder keeps trying to renew before it gives the lock up as lost and stops the command.\nDefault two thirds of --lease-duration (10s).")
	fs.Var(durationValue{&o.RetryPeriod}, "retry-period", "Interval between renewals, and between retries after API errors.\nDefault a fifth of --renew-deadline (2s). Timings not given keep client-go's\nproportions 15 : 10 : 2 with those given, so --lease-duration 3s alone works.")
	fs.BoolVarP(&o.Cleanup, "cleanup-lease", "u", o.Cleanup, "Delete the Lease when done, instead of only releasing it.")
	fs.BoolVar(&o.Cleanup, "unlock", o.Cleanup, "Same as --cleanup-lease.")

	fs.Var(maxHoldersValue{&o.MaxHolders}, "max-holders", fmt.Sprintf("How many commands may hold the lock at once (1 to %d): a counting lock. Every contender\nof the lock must give the same number. Holders use the Leases <lease>, <lease>-1 ... <lease>-<N-1>.", klock.MaxMaxHolders))
	fs.Var(orderValue{&o.Order}, "order", "Who gets the lock first: fifo (the waiters in the order they came, queued in the Lease\n<lease>-queue) or any (whoever writes first after a release).")
	fs.Var(durationValue{&o.QueueTTL}, "queue-ttl", "How long a waiter that gives no sign of life keeps its place in the queue (default 1m).\nA waiter renews its place every third of it.")

	fs.VarP(signalValue{&o.Signal}, "signal", "s", "Signal sent to the command when the lock is lost (name or number).")
	fs.VarP(durationValue{&o.KillAfter}, "kill-after", "k", "When the lock is lost, send KILL this long after --signal if the command still runs.\nDefault and most: lease-duration − renew-deadline less a tenth (4.5s by default), before others may take the lock.")

	fs.BoolVar(&o.Debug, "debug", o.Debug, "Log what klock does to stderr.")
	fs.BoolVar(&o.Debug, "verbose", o.Debug, "Same as --debug.")
	fs.BoolVarP(&o.Version, "version", "V", o.Version, "Print the version and exit.")
	fs.BoolVarP(&o.Help, "help", "h", o.Help, "Print this help and exit.")
}

// Validate checks what parsing alone cannot. Lease settings are checked by
// the klock package, with the same kind of message.
func (o *Options) Validate() error {
	if len(o.Command) == 0 {
		return errors.New("no command given: put the command after --, as in klock -l nightly -- ./backup.sh")
	}
	if o.GenerateIdentity && o.Identity != "" {
		return fmt.Errorf("--identity %q and --generate-identity contradict each other: give one of them", o.Identity)
	}
	if o.NonBlock && o.Wait > 0 {
		return fmt.Errorf("--nonblock and --wait %s contradict each other: give one of them", o.Wait)
	}
	return nil
}

// lockConfig resolves identity and namespace: flags first, then the
// environment, then where klock runs.
func (o *Options) lockConfig(getenv func(string) string, kubeconfig clientcmd.ClientConfig) klock.Config {
	cfg := klock.Config{
		Name:            o.Lease,
		Namespace:       o.Namespace,
		Identity:        o.Identity,
		LeaseDuration:   o.LeaseDuration,
		RenewDeadline:   o.RenewDeadline,
		RetryPeriod:     o.RetryPeriod,
		Labels:          o.Labels,
		DeleteOnRelease: o.Cleanup,
		MaxHolders:      o.MaxHolders,
		Order:           o.Order,
		QueueTTL:        o.QueueTTL,
	}
	if cfg.Identity == "" && !o.GenerateIdentity {
		cfg.Identity = getenv(EnvIdentity)
	}
	if cfg.Identity == "" {
		cfg.Identity = klock.DefaultIdentity()
	}
	if cfg.Namespace == "" {
		cfg.Namespace = getenv(EnvNamespace)
	}
	if cfg.Namespace == "" {
		if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil {
			cfg.Namespace = strings.TrimSpace(string(b))
		}
	}
	if cfg.Namespace == "" {
		// The kubeconfig context's namespace, or "default".
		if ns, _, err := kubeconfig.Namespace(); err == nil {
			cfg.Namespace = ns
		}
	}
	return cfg
}

// kubeconfig loads --kubeconfig, else $KUBECONFIG, else ~/.kube/config, else
// the in-cluster service account, as kubectl does.
func (o *Options) kubeconfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
}

// pinnedConfig is the API client configuration for --api-server: that URL,
// the service account token, and the CA in $KLOCK_API_CA only.
func pinnedConfig(server, ca string) (*rest.Config, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--api-server %q is not an https URL: give one such as https://10.96.0.1:443", server)
	}
	if !x509.NewCertPool().AppendCertsFromPEM([]byte(ca)) {
		return nil, fmt.Errorf("--api-server needs the API server's CA, PEM-encoded, in $%s, which holds none", EnvAPICA)
	}
	rc := &rest.Config{
		Host:            server,
		BearerTokenFile: serviceAccountTokenFile,
		TLSClientConfig: rest.TLSClientConfig{CAData: []byte(ca)},
	}
	rc.QPS, rc.Burst = 100, 200
	return rc, nil
}

func restConfig(kubeconfig clientcmd.ClientConfig) (*rest.Config, error) {
	rc, err := kubeconfig.ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		return nil, errors.New("no cluster to talk to: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run in a pod with a service account")
	}
	if err != nil {
		return nil, fmt.Errorf("cannot load the kubeconfig: %w", err)
	}
	// A lock is a handful of small requests; client-side throttling would
	// only add latency to a handoff.
	rc.QPS, rc.Burst = 100, 200
	return rc, nil
}

// killAfter is how long after --signal a command that still runs gets KILL
// when the lock is lost. Others may take the Lease lease-duration −
// renew-deadline after the loss, so the command is KILLed before that, with
// a tenth of it to spare, unless -k asks for sooner; a -k longer than that
// would let two commands run at once, and is refused.
func (o *Options) killAfter(cfg klock.Config) (time.Duration, error) {
	grace := cfg.LeaseDuration - cfg.RenewDeadline
	if o.KillAfter > grace {
		return 0, fmt.Errorf("--kill-after %s is longer than others wait once the lock is lost (lease duration %s − renew deadline %s = %s): lower --kill-after, or raise --lease-duration", o.KillAfter, cfg.LeaseDuration, cfg.RenewDeadline, grace)
	}
	if o.KillAfter > 0 {
		return o.KillAfter, nil
	}
	return grace - grace/10, nil
}

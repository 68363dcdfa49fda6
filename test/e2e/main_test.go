//go:build e2e

// Package e2e runs klock-webhook and klock on a real single-node cluster
// (test/e2e/cluster): the webhook installed with the project's Helm chart,
// running as a pod behind its Service, wrapping workloads whose behaviour
// is read back from what the cluster reports. Run it with make e2e.
package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/klock-io/klock/test/e2e/cluster"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/test/image"
	"github.com/klock-io/klock/webhook/wrap"
)

// Names the scenarios share.
const (
	release          = "klock"
	releaseNamespace = "klock-system"
	webhookName      = release + "-webhook" // its Deployment and Service
	// leaseHolderRole is the chart's ClusterRole for wrapped workloads
	// (rbac.leaseHolderClusterRole).
	leaseHolderRole = release + "-lease-holder"
	klockImage      = "ghcr.io/klock-io/klock:e2e"
	busyboxImage    = "docker.io/klock-e2e/busybox:1"
)

var (
	bin  = flag.String("bin", "", "directory with the Kubernetes binaries (bin/k8s/<version>); make e2e sets it")
	logs = flag.String("logs", "", "directory for the components' logs; default: a new temporary directory")

	// cl is the cluster the scenarios run on.
	cl *cluster.Cluster
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	flag.Parse()
	// The tests read what happens from the cluster; controller-runtime's
	// client (for ClusterLockPolicies) would otherwise complain of no logger.
	ctrllog.SetLogger(logr.Discard())
	logf := func(format string, args ...any) { fmt.Printf("e2e: "+format+"\n", args...) }
	if *bin == "" {
		logf("-bin is not set: run the end-to-end tests with make e2e")
		return 2
	}
	if *logs == "" {
		*logs, _ = os.MkdirTemp("", "klock-e2e-logs-")
	}
	// The scenarios mostly wait: three of them for two runs of a CronJob,
	// on the controller's one-minute schedule. go test's default of
	// GOMAXPROCS at a time (2 here) would queue those behind each other,
	// minutes more; all at once, the ten starting together load the one
	// node enough to make an admission call exceed the webhook's 5 s
	// timeout. Four at a time: the three CronJob ones (started first), and
	// the short ones one after another beside them. -test.parallel, when
	// given, still decides.
	if !flagSet("test.parallel") {
		_ = flag.Set("test.parallel", "4")
	}
	cluster.CleanStale(filepath.Join(*bin, "kube-proxy"), logf)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		current      atomic.Pointer[cluster.Cluster]
		inTests      atomic.Bool
		teardownOnce sync.Once
		teardownErr  error
	)
	teardown := func() {
		teardownOnce.Do(func() {
			c := current.Load()
			if c == nil {
				return
			}
			tctx, tcancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer tcancel()
			teardownErr = c.Stop(tctx)
			c.Summary()
			logf("component logs are in %s", *logs)
		})
	}
	// Tear down on ^C or SIGTERM, and before go test's own -timeout, which
	// would end the process without running deferred functions. During
	// setup, ending ctx is enough: setup stops, and so does what it started.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	deadline := make(<-chan time.Time)
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 5*time.Minute {
			deadline = time.After(d - 3*time.Minute)
		}
	}
	go func() {
		select {
		case sig := <-sigs:
			logf("got %v: tearing the cluster down", sig)
		case <-deadline:
			logf("the test timeout is near: tearing the cluster down")
		case <-ctx.Done():
			return
		}
		cancel()
		if inTests.Load() {
			teardown()
			os.Exit(1)
		}
	}()

	code := 1
	c, err := setup(ctx, logf)
	current.Store(c) // set on a failure after the cluster started, too
	switch {
	case err != nil:
		logf("setup failed: %v", err)
	case ctx.Err() != nil:
		logf("interrupted during setup")
	default:
		cl = c
		inTests.Store(true)
		code = m.Run()
		c.Phase("scenarios")
	}
	cancel()
	teardown()
	if teardownErr != nil {
		logf("teardown: %v", teardownErr)
		return 1
	}
	return code
}

// flagSet reports whether the command line gave the flag.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// setup starts the cluster, builds and imports the images and installs
// the webhook's chart, reporting each phase's time.
func setup(ctx context.Context, logf func(string, ...any)) (*cluster.Cluster, error) {
	start := time.Now()
	binDir, err := os.MkdirTemp("", "klock-e2e-bin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(binDir)
	bins, err := framework.BuildBinaries(binDir)
	if err != nil {
		return nil, err
	}
	pauseBin, err := framework.Build(binDir, "github.com/klock-io/klock/test/e2e/pause")
	if err != nil {
		return nil, err
	}
	c, err := cluster.Start(ctx, cluster.Options{Bin: *bin, Logs: *logs, Logf: logf, Since: start, FirstPhase: "build klock, klock-webhook and pause"})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*cluster.Cluster, error) { return c, err } // run tears c down

	klockImg, err := image.Build(bins.Klock, bins.Webhook, v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH})
	if err != nil {
		return fail(err)
	}
	pauseImg, err := cluster.PauseImage(pauseBin)
	if err != nil {
		return fail(err)
	}
	busybox, err := cluster.BusyboxImage(v1.Config{Cmd: []string{"sh"}})
	if err != nil {
		return fail(err)
	}
	for ref, img := range map[string]v1.Image{cluster.SandboxImage: pauseImg, klockImage: klockImg, busyboxImage: busybox} {
		if err := c.Import(ctx, ref, img); err != nil {
			return fail(fmt.Errorf("importing %s: %w", ref, err))
		}
	}
	c.Phase("build and import the klock, busybox and pause images")

	if err := installChart(ctx, c); err != nil {
		return fail(err)
	}
	c.Phase("helm install (self-managed TLS) until the webhook admits through its Service")
	return c, nil
}

// installChart installs charts/klock into the cluster, running the image
// imported above, and waits until the API server gets a wrapped pod back
// from the webhook through its Service.
func installChart(ctx context.Context, c *cluster.Cluster) error {
	flags := genericclioptions.NewConfigFlags(false)
	kubeconfig, namespace := c.Kubeconfig, releaseNamespace
	flags.KubeConfig, flags.Namespace = &kubeconfig, &namespace
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, releaseNamespace, "secret"); err != nil {
		return err
	}
	chart, err := loader.Load(filepath.Join(framework.RepoRoot(), "charts", "klock"))
	if err != nil {
		return err
	}
	install := action.NewInstall(cfg)
	install.ReleaseName, install.Namespace, install.CreateNamespace = release, releaseNamespace, true
	install.WaitStrategy, install.Timeout = kube.StatusWatcherStrategy, 4*time.Minute
	values := map[string]any{
		"tls":   map[string]any{"mode": "selfManaged"},
		"image": map[string]any{"repository": "ghcr.io/klock-io/klock", "tag": "e2e", "pullPolicy": "Never"},
		// The image scenario's registry, on the bridge's address over
		// plain HTTP (any port: it listens on a random one).
		"webhook": map[string]any{"replicas": 2, "insecureRegistries": []any{cluster.PodGateway}},
		// The Lease access controller, for the policy scenario.
		"leaseAccess": "policy",
	}
	if _, err := install.RunWithContext(ctx, chart, values); err != nil {
		return fmt.Errorf("helm install: %w", err)
	}

	// Ready pods are not enough: the CA must be in the webhook
	// configuration and the Service's endpoints in kube-proxy's rules.
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: metav1.NamespaceDefault, Annotations: map[string]string{wrap.AnnotationLease: "probe"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: busyboxImage, Command: []string{"true"}}}},
	}
	quiet := rest.CopyConfig(c.Config)
	quiet.WarningHandler = rest.NoWarnings{} // default's service account may not hold leases
	client, err := kubernetes.NewForConfig(quiet)
	if err != nil {
		return err
	}
	var last error
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		got, err := client.CoreV1().Pods(metav1.NamespaceDefault).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && got.Annotations[wrap.AnnotationInjected] != "" {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if last = err; err == nil {
			last = errors.New("the pod came back unwrapped")
		}
	}
	return fmt.Errorf("the installed webhook never wrapped a pod: %v", last)
}

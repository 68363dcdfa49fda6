// Package integration tests the klock binary and engine against a real
// kube-apiserver and etcd.
package integration

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/test/framework"
)

var (
	cp         *framework.ControlPlane
	klockBin   string
	probeBin   string
	webhookBin string
)

// Short lease timings keep the takeover tests fast; the ratios are those of
// the defaults.
var fast = []string{"--lease-duration", "2s", "--renew-deadline", "1500ms", "--retry-period", "300ms"}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	return framework.Main(m, func(env *framework.Env) {
		cp, klockBin, probeBin, webhookBin = env.ControlPlane, env.Klock, env.Probe, env.Webhook
	})
}

// namespace creates a namespace for one test.
func namespace(t *testing.T) string {
	t.Helper()
	ns, err := cp.CreateNamespace(context.Background(), "klock")
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns
}

// klockCmd is a klock process against the test control plane; args come
// before "--", command after it.
type klockCmd struct {
	*exec.Cmd
	stderr bytes.Buffer
	stdout bytes.Buffer
}

func startKlock(t *testing.T, kubeconfig string, args []string, command ...string) *klockCmd {
	t.Helper()
	return startKlockEnv(t, kubeconfig, nil, args, command...)
}

// startKlockEnv is startKlock with extra environment variables.
func startKlockEnv(t *testing.T, kubeconfig string, env, args []string, command ...string) *klockCmd {
	t.Helper()
	argv := append([]string{"--kubeconfig", kubeconfig}, args...)
	return startKlockRaw(t, env, append(append(argv, "--"), command...)...)
}

// startKlockRaw runs klock with exactly argv.
func startKlockRaw(t *testing.T, env []string, argv ...string) *klockCmd {
	t.Helper()
	return startProcess(t, env, klockBin, argv...)
}

// startProcess runs path (klock, or something that runs klock) with argv.
func startProcess(t *testing.T, env []string, path string, argv ...string) *klockCmd {
	t.Helper()
	k := &klockCmd{Cmd: exec.Command(path, argv...)}
	k.Stderr, k.Stdout = &k.stderr, &k.stdout
	// A command that outlives klock keeps the output pipes open; do not let
	// that hang the test.
	k.WaitDelay = 2 * time.Second
	// Nothing inherited from the environment running the tests.
	k.Env = append(append(os.Environ(), "KLOCK_NAMESPACE=", "KLOCK_IDENTITY=", "KUBECONFIG="), env...)
	if err := k.Start(); err != nil {
		t.Fatalf("starting klock: %v", err)
	}
	t.Cleanup(func() {
		if k.ProcessState == nil {
			_ = k.Process.Kill()
			_, _ = k.Process.Wait()
		}
	})
	return k
}

// wait waits for klock to exit and returns its exit code.
func (k *klockCmd) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- k.Wait() }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = k.Process.Kill()
		<-done
		t.Fatalf("klock did not exit within %s; stderr:\n%s", timeout, k.stderr.String())
	}
	return k.ProcessState.ExitCode()
}

func (k *klockCmd) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := k.Process.Signal(sig); err != nil {
		t.Fatalf("signalling klock: %v", err)
	}
}

// probe returns the argv of a probe run recording into log.
func probe(log, name string, args ...string) []string {
	return append([]string{probeBin, "-log", log, "-name", name}, args...)
}

// event is a line of a probe log.
type event = framework.ProbeEvent

func readLog(t *testing.T, path string) []event {
	t.Helper()
	events, err := framework.ReadProbeLog(path)
	if err != nil {
		t.Fatal(err)
	}
	return events
}

// find returns the first event of kind for name.
func find(events []event, kind, name string) (event, bool) {
	return framework.FindProbeEvent(events, kind, name)
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	framework.Eventually(t, timeout, what, cond)
}

func getLease(t *testing.T, ns, name string) *coordinationv1.Lease {
	t.Helper()
	l, err := cp.Client.CoordinationV1().Leases(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting lease %s/%s: %v", ns, name, err)
	}
	return l
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// apiProxy is a cuttable path to the API server, with a kubeconfig using it.
type apiProxy struct {
	*framework.Proxy
	kubeconfig string
}

func newAPIProxy(t *testing.T) (*apiProxy, error) {
	t.Helper()
	u, err := url.Parse(cp.Config.Host)
	if err != nil {
		return nil, err
	}
	p, err := framework.NewProxy(u.Host)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = p.Close() })
	kc, err := framework.KubeconfigVia(cp.Kubeconfig, "https://"+p.Addr())
	if err != nil {
		return nil, err
	}
	return &apiProxy{Proxy: p, kubeconfig: kc}, nil
}

// waitStarted waits until the probe called name has started.
func waitStarted(t *testing.T, log, name string) {
	t.Helper()
	eventually(t, 30*time.Second, name+" to start", func() bool { _, ok := find(readLog(t, log), "start", name); return ok })
}

// assertAfter checks that the probe called second started only after the
// one called first ended.
func assertAfter(t *testing.T, log, first, second string) {
	t.Helper()
	events := readLog(t, log)
	end, ended := find(events, "end", first)
	start, started := find(events, "start", second)
	if !ended || !started || start.At.Before(end.At) {
		t.Errorf("%s started at %v (ran: %v), before %s ended at %v (ended: %v)", second, start.At, started, first, end.At, ended)
	}
}

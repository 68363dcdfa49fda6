package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/test/framework"
)

// timings are the lease timings of one scenario, passed to klock as flags.
type timings struct {
	lease, renew, retry time.Duration
}

func (tm timings) args() []string {
	return []string{"--lease-duration", tm.lease.String(), "--renew-deadline", tm.renew.String(), "--retry-period", tm.retry.String()}
}

func (tm timings) String() string {
	return fmt.Sprintf("lease %s, renew deadline %s, retry %s", tm.lease, tm.renew, tm.retry)
}

var (
	// fast are the integration tests' timings, in the defaults' ratios:
	// for scenarios whose bounds are a lease duration or less.
	fast = timings{lease: 2 * time.Second, renew: 1500 * time.Millisecond, retry: 300 * time.Millisecond}
	// defaults are klock's defaults. A 15s lease tells "handed over at
	// once" clearly apart from "stuck until the Lease expired".
	defaults = timings{lease: 15 * time.Second, renew: 10 * time.Second, retry: 2 * time.Second}
)

// slack is added to every upper bound: the machine is small and shared,
// and process start-up, scheduling and the API server all take time the
// design does not count.
const slack = 3 * time.Second

// scenario is one test's namespace, files and probe log.
type scenario struct {
	t   *testing.T
	ns  string
	dir string
	// log is where the probes record; lockfile the flock they hold while
	// they run, so that any two commands inside at once are caught.
	log, lockfile string
}

func newScenario(t *testing.T) *scenario {
	t.Helper()
	ns, err := cp.CreateNamespace(context.Background(), "chaos")
	if err != nil {
		t.Fatalf("creating a namespace: %v", err)
	}
	dir := tempDir(t)
	return &scenario{t: t, ns: ns, dir: dir, log: filepath.Join(dir, "probe.log"), lockfile: filepath.Join(dir, "inside")}
}

// path is a file of the scenario's.
func (s *scenario) path(name string) string { return filepath.Join(s.dir, name) }

// probe is the argv of a probe recording into the scenario's log as name,
// holding the scenario's lockfile while it runs.
func (s *scenario) probe(name string, args ...string) []string {
	return append([]string{probeBin, "-log", s.log, "-name", name, "-lockfile", s.lockfile}, args...)
}

// shell quotes argv as one sh command line.
func shell(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// klockRun is a klock process; its stdout and stderr go to a file, so that
// a command that wrongly outlives klock holds no pipe of the test's.
type klockRun struct {
	name    string
	cmd     *exec.Cmd
	out     string
	started time.Time
	exited  chan struct{}
	code    int
}

// klock starts klock in the scenario's namespace with args, command after
// "--", against the API server kubeconfig points at.
func (s *scenario) klock(name, kubeconfig string, args []string, command ...string) *klockRun {
	s.t.Helper()
	argv := append([]string{"--kubeconfig", kubeconfig, "-n", s.ns}, args...)
	argv = append(append(argv, "--"), command...)
	k, err := startKlock(name, s.path(name+".out"), argv)
	if err != nil {
		s.t.Fatal(err)
	}
	// Cleanups run last first: kill, then show what klock said.
	s.t.Cleanup(func() {
		if s.t.Failed() {
			s.t.Logf("klock %s (exit %d) wrote:\n%s", name, k.code, k.output())
		}
	})
	s.t.Cleanup(k.kill)
	return k
}

func startKlock(name, out string, argv []string) (*klockRun, error) {
	f, err := os.Create(out)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	k := &klockRun{name: name, cmd: exec.Command(klockBin, argv...), out: out, exited: make(chan struct{})}
	k.cmd.Stdout, k.cmd.Stderr = f, f
	// Nothing inherited from the environment running the tests.
	k.cmd.Env = append(os.Environ(), "KLOCK_NAMESPACE=", "KLOCK_IDENTITY=", "KUBECONFIG=")
	k.started = time.Now()
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting klock %s: %w", name, err)
	}
	go func() {
		_ = k.cmd.Wait()
		k.code = k.cmd.ProcessState.ExitCode()
		close(k.exited)
	}()
	return k, nil
}

// wait waits for klock to exit and returns its exit code.
func (k *klockRun) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-k.exited:
		return k.code
	case <-time.After(timeout):
		t.Fatalf("klock %s did not exit within %s; its output:\n%s", k.name, timeout, k.output())
		return 0
	}
}

// running reports whether klock has not exited yet.
func (k *klockRun) running() bool {
	select {
	case <-k.exited:
		return false
	default:
		return true
	}
}

func (k *klockRun) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := k.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signalling klock %s: %v", k.name, err)
	}
}

func (k *klockRun) kill() {
	if k.running() {
		_ = k.cmd.Process.Kill()
		<-k.exited
	}
}

// output is the end of what klock wrote, for failure messages.
func (k *klockRun) output() string {
	b, err := os.ReadFile(k.out)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = append([]string{"..."}, lines[len(lines)-40:]...)
	}
	return strings.Join(lines, "\n")
}

// expectExit waits for k and fails t unless it exited with want.
func (k *klockRun) expectExit(t *testing.T, timeout time.Duration, want int, why string) {
	t.Helper()
	if code := k.wait(t, timeout); code != want {
		t.Errorf("klock %s exited %d, want %d (%s); its output:\n%s", k.name, code, want, why, k.output())
	}
}

// event is a line of the probe log.
type event = framework.ProbeEvent

// events reads the probe log in time order.
func (s *scenario) events() []event {
	s.t.Helper()
	return readEvents(s.t, s.log)
}

func readEvents(t *testing.T, path string) []event {
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

// must returns the first event of kind for name, or fails t.
func (s *scenario) must(events []event, kind, name string) event {
	s.t.Helper()
	e, ok := find(events, kind, name)
	if !ok {
		s.t.Fatalf("the probe log has no %s of %s:\n%s", kind, name, dump(events))
	}
	return e
}

// waitFor waits until the probe log has an event of kind for name.
func (s *scenario) waitFor(kind, name string, timeout time.Duration) event {
	s.t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if e, ok := find(s.events(), kind, name); ok {
			return e
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %s of %s within %s; the probe log:\n%s", kind, name, timeout, dump(s.events()))
		}
	}
}

func dump(events []event) string {
	var b strings.Builder
	for _, e := range events {
		fmt.Fprintf(&b, "  %s %-8s %-12s %s\n", e.At.Format("15:04:05.000000"), e.Kind, e.Name, strings.Join(e.Fields, " "))
	}
	return b.String()
}

// token is the fencing token a start event carries.
func token(t *testing.T, e event) uint64 {
	t.Helper()
	if e.Kind != "start" || len(e.Fields) < 2 {
		t.Fatalf("no fencing token in %+v", e)
	}
	n, err := strconv.ParseUint(e.Fields[0], 10, 64)
	if err != nil {
		t.Fatalf("%s got fencing token %q: %v", e.Name, e.Fields[0], err)
	}
	return n
}

// command is what one acquisition ran: the probes that share its fencing
// token and holder identity (a shell's children inherit both from it).
type command struct {
	token   uint64
	first   time.Time // the first start
	lastEnd time.Time // the last end recorded; a killed probe records none
	names   []string
}

// commands groups the start and end events by fencing token and holder
// identity, in order of their first start. Two acquisitions that got the
// same token stay apart, and checkTokens reports them.
func commands(t *testing.T, events []event) []*command {
	t.Helper()
	byKey := map[string]*command{}
	byName := map[string]*command{}
	var out []*command
	for _, e := range events {
		switch e.Kind {
		case "start":
			tok := token(t, e)
			key := e.Fields[0] + " " + e.Fields[1]
			c := byKey[key]
			if c == nil {
				c = &command{token: tok, first: e.At}
				byKey[key] = c
				out = append(out, c)
			}
			c.names = append(c.names, e.Name)
			byName[e.Name] = c
		case "end":
			if c := byName[e.Name]; c != nil && e.At.After(c.lastEnd) {
				c.lastEnd = e.At
			}
		}
	}
	return out
}

// checkNoOverlap asserts that no probe found another command inside the
// lock (the flock held by every probe of a command while it lives, or the
// marker file), and that, in the order commands started, each started
// after every earlier command's recorded end.
func checkNoOverlap(t *testing.T, events []event) {
	t.Helper()
	for i, e := range events {
		if e.Kind == "overlap" {
			t.Errorf("%s found another command inside the lock at %s (%s); the log around it:\n%s",
				e.Name, e.At.Format(time.StampMicro), strings.Join(e.Fields, " "), around(events, i))
		}
	}
	var lastEnd time.Time
	var lastName string
	for _, c := range commands(t, events) {
		if c.first.Before(lastEnd) {
			t.Errorf("%v started at %s, before %s ended at %s", c.names, c.first.Format(time.StampMicro), lastName, lastEnd.Format(time.StampMicro))
		}
		if c.lastEnd.After(lastEnd) {
			lastEnd, lastName = c.lastEnd, strings.Join(c.names, ",")
		}
	}
}

// around prints the events near events[i].
func around(events []event, i int) string {
	return dump(events[max(0, i-6):min(len(events), i+3)])
}

// checkTokens asserts that fencing tokens strictly increase in the order
// the commands started.
func checkTokens(t *testing.T, events []event) {
	t.Helper()
	var last uint64
	var lastNames []string
	for _, c := range commands(t, events) {
		if c.token <= last {
			t.Errorf("%v got fencing token %d, not above %d of %v which started before", c.names, c.token, last, lastNames)
		}
		last, lastNames = c.token, c.names
	}
}

// checkExclusion asserts the first invariant: never two commands inside
// the lock at once, fencing tokens strictly increasing.
func checkExclusion(t *testing.T, events []event) {
	t.Helper()
	checkNoOverlap(t, events)
	checkTokens(t, events)
	if t.Failed() && len(events) <= 100 {
		t.Logf("the probe log:\n%s", dump(events))
	}
}

// atMost fails t if got exceeds bound; what says what was measured.
func atMost(t *testing.T, what string, got, bound time.Duration) {
	t.Helper()
	if got > bound {
		t.Errorf("%s took %s, over the bound of %s", what, ms(got), bound)
	}
}

// ms prints d rounded to milliseconds.
func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

func (s *scenario) lease(name string) *coordinationv1.Lease {
	s.t.Helper()
	l, err := cp.Client.CoordinationV1().Leases(s.ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		s.t.Fatalf("reading lease %s/%s: %v", s.ns, name, err)
	}
	return l
}

func holder(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// pid reads a PID the probe wrote with -pid.
func (s *scenario) pid(file string) int {
	s.t.Helper()
	var pid int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(s.path(file))
		if err == nil {
			if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no PID in %s: %v", file, err)
		}
	}
	// Whatever the outcome, nothing the scenario started outlives it.
	s.t.Cleanup(func() {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return pid
}

// alive reports whether pid runs: it exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

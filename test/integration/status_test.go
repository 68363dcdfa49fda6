package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/klock-io/klock/klock"
)

// statusList is the document klock status -o json|yaml prints.
type statusList struct {
	Locks []klock.LockStatus `json:"locks"`
}

// runStatus runs klock status with args and returns its output, failing
// the test unless it exits 0.
func runStatus(t *testing.T, path string, args ...string) string {
	t.Helper()
	k := startProcess(t, nil, path, append([]string{"status", "--kubeconfig", cp.Kubeconfig}, args...)...)
	if code := k.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("klock status %s exited %d: %s", strings.Join(args, " "), code, k.stderr.String())
	}
	return k.stdout.String()
}

// statusOf runs klock status -o json (or yaml) and decodes it.
func statusOf(t *testing.T, format string, args ...string) []klock.LockStatus {
	t.Helper()
	out := runStatus(t, klockBin, append(args, "-o", format)...)
	raw := []byte(out)
	if format == "yaml" {
		var err error
		if raw, err = yaml.YAMLToJSON(raw); err != nil {
			t.Fatalf("%v in %s", err, out)
		}
	}
	var got statusList
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	return got.Locks
}

func identities[T any](xs []T, id func(T) string) []string {
	var out []string
	for _, x := range xs {
		out = append(out, id(x))
	}
	return out
}

func holderIDs(hs []klock.HolderStatus) []string {
	return identities(hs, func(h klock.HolderStatus) string { return h.Identity })
}

func waiterIDs(ws []klock.WaiterStatus) []string {
	return identities(ws, func(w klock.WaiterStatus) string { return w.Identity })
}

// waitInQueue starts an acquisition of l in the background and waits
// until id has its place in the queue of lock name.
func waitInQueue(t *testing.T, ctx context.Context, l *klock.Lock, ns, name, id string) {
	t.Helper()
	go func() {
		if h, err := l.Acquire(ctx); err == nil {
			_ = h.Release(context.Background())
		}
	}()
	eventually(t, 10*time.Second, id+" to queue", func() bool { return slices.Contains(queueOf(t, ns, name), id) })
}

// A counting lock with two holders and two waiters, as klock status shows
// it in every form.
func TestStatusShowsHoldersAndWaiters(t *testing.T) {
	ns := namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	config := func(id string) klock.Config {
		cfg := fastConfig(ns, "render", id)
		cfg.MaxHolders = 2
		return cfg
	}
	tokens := map[string]uint64{}
	for _, id := range []string{"a", "b"} {
		h, err := newLock(t, cp.Config, config(id)).Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = h.Release(context.Background()) }()
		tokens[id] = h.Token()
	}
	waitInQueue(t, ctx, newLock(t, cp.Config, config("c")), ns, "render", "c")
	waitInQueue(t, ctx, newLock(t, cp.Config, config("d")), ns, "render", "d")

	// A Lease of client-go's leader election: no klock label.
	now := metav1.NewMicroTime(time.Now())
	if _, err := cp.Client.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "election"},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity: new("leader-1"), LeaseDurationSeconds: new(int32(15)),
			AcquireTime: &metav1.MicroTime{Time: now.Add(-time.Minute)}, RenewTime: &now,
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, format := range []string{"json", "yaml"} {
		locks := statusOf(t, format, "-n", ns)
		if len(locks) != 1 {
			t.Fatalf("-o %s: %d locks, want render alone (election is no klock Lease): %+v", format, len(locks), locks)
		}
		l := locks[0]
		if l.Namespace != ns || l.Name != "render" || l.MaxHolders != 2 || !l.Queued {
			t.Errorf("-o %s: lock %s/%s maxHolders %d queued %v, want %s/render, 2, queued", format, l.Namespace, l.Name, l.MaxHolders, l.Queued, ns)
		}
		if got := holderIDs(l.Holders); !slices.Equal(slices.Sorted(slices.Values(got)), []string{"a", "b"}) {
			t.Errorf("-o %s: holders %v, want a and b", format, got)
		}
		for _, h := range l.Holders {
			if h.FencingToken != tokens[h.Identity] || h.Abandoned || h.Since == nil || h.LeaseDurationSeconds != 2 {
				t.Errorf("-o %s: holder %+v, want token %d, not abandoned", format, h, tokens[h.Identity])
			}
		}
		if got := waiterIDs(l.Waiters); !slices.Equal(got, []string{"c", "d"}) {
			t.Errorf("-o %s: waiters %v, want c then d", format, got)
		}
	}

	// By name: the lock alone, a Lease another program made, or a lock
	// that has no Lease (never taken, or cleaned up), which is free.
	if locks := statusOf(t, "json", "-n", ns, "render"); len(locks) != 1 || !slices.Equal(waiterIDs(locks[0].Waiters), []string{"c", "d"}) {
		t.Errorf("status render: %+v", locks)
	}
	if locks := statusOf(t, "json", "-n", ns, "election"); len(locks) != 1 || !slices.Equal(holderIDs(locks[0].Holders), []string{"leader-1"}) || locks[0].MaxHolders != 1 {
		t.Errorf("status election: %+v, want leader-1 holding a mutex", locks)
	}
	if locks := statusOf(t, "json", "-n", ns, "nothing"); len(locks) != 1 || locks[0].Name != "nothing" || len(locks[0].Holders)+len(locks[0].Waiters) != 0 {
		t.Errorf("status nothing: %+v, want it free", locks)
	}
	if locks := statusOf(t, "json", "-A"); !slices.ContainsFunc(locks, func(l klock.LockStatus) bool { return l.Namespace == ns && l.Name == "render" }) {
		t.Errorf("status -A lacks %s/render: %+v", ns, locks)
	}

	table := runStatus(t, klockBin, "-n", ns)
	t.Logf("klock status -n %s:\n%s", ns, table)
	rows := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	want := []*regexp.Regexp{
		regexp.MustCompile(`^LOCK +MAX +ROLE +IDENTITY +SINCE +RENEWED +TOKEN +STATE$`),
		regexp.MustCompile(`^render +2 +holder +[ab] +\d+s +\d+s ago +\d+ +live$`),
		regexp.MustCompile(`^render +2 +holder +[ab] +\d+s +\d+s ago +\d+ +live$`),
		regexp.MustCompile(`^render +2 +waiting #1 +c +\d+s +- +- +live$`),
		regexp.MustCompile(`^render +2 +waiting #2 +d +\d+s +- +- +live$`),
	}
	if len(rows) != len(want) {
		t.Fatalf("table:\n%s", table)
	}
	for i, re := range want {
		if !re.MatchString(rows[i]) {
			t.Errorf("row %d %q does not match %s; table:\n%s", i, rows[i], re, table)
		}
	}
	// Columns line up: every row has IDENTITY where the header has it.
	col := strings.Index(rows[0], "IDENTITY")
	for _, r := range rows[1:] {
		if len(r) <= col || r[col-1] != ' ' || r[col] == ' ' {
			t.Errorf("row %q is not aligned with the header %q", r, rows[0])
		}
	}

	// As a kubectl plugin, by the name kubectl runs it by.
	plugin := filepath.Join(t.TempDir(), "kubectl-klock")
	if err := os.Symlink(klockBin, plugin); err != nil {
		t.Fatal(err)
	}
	if out := runStatus(t, plugin, "-n", ns, "-o", "json", "render"); !strings.Contains(out, `"name": "render"`) {
		t.Errorf("kubectl-klock status: %s", out)
	}
	k := startProcess(t, nil, plugin)
	if code := k.wait(t, 10*time.Second); code != 0 || !strings.Contains(k.stdout.String(), "kubectl klock status [flags] [LOCK]") {
		t.Errorf("kubectl-klock alone exited %d, printed %q", code, k.stdout.String())
	}
}

// lines collects the lines a process prints, for waiting on them as they
// come.
type lines struct {
	mu   sync.Mutex
	seen []string
}

func (l *lines) read(r io.Reader) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		l.mu.Lock()
		l.seen = append(l.seen, s.Text())
		l.mu.Unlock()
	}
}

func (l *lines) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.seen, "\n")
}

// await waits for a line that matches re, and returns its submatches.
func (l *lines) await(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	eventually(t, 15*time.Second, fmt.Sprintf("a line matching %s, after:\n%s\n", re, l.all()), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, s := range l.seen {
			if m = re.FindStringSubmatch(s); m != nil {
				return true
			}
		}
		return false
	})
	return m
}

// statusWatch is a klock status -w process.
type statusWatch struct {
	cmd       *exec.Cmd
	out, errs lines
	readers   sync.WaitGroup
}

func startStatusWatch(t *testing.T, kubeconfig string, args ...string) *statusWatch {
	t.Helper()
	w := &statusWatch{cmd: exec.Command(klockBin, append([]string{"status", "--kubeconfig", kubeconfig, "-w"}, args...)...)}
	w.cmd.Env = append(os.Environ(), "KUBECONFIG=")
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := w.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if w.cmd.ProcessState == nil {
			_ = w.cmd.Process.Kill()
			_ = w.cmd.Wait()
		}
	})
	w.readers.Go(func() { w.out.read(stdout) })
	w.readers.Go(func() { w.errs.read(stderr) })
	return w
}

// stop interrupts klock status -w, which must exit 0.
func (w *statusWatch) stop(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	w.readers.Wait()
	if err := w.cmd.Wait(); err != nil {
		t.Errorf("klock status -w after INT: %v; stderr:\n%s", err, w.errs.all())
	}
}

// changeLine matches a line of klock status -w about lock ns/what.
func changeLine(ns, what string) *regexp.Regexp {
	return regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d) ` + regexp.QuoteMeta(ns) + `/` + what + `$`)
}

// klock status -w reports acquisitions, the queue, releases and expiry as
// they happen, and stops on INT with status 0.
func TestStatusWatch(t *testing.T) {
	ns := namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := startStatusWatch(t, cp.Kubeconfig, "-n", ns)
	out := &w.out
	w.errs.await(t, regexp.MustCompile(`^No klock locks found in namespace `+ns+`\.$`))

	line := func(what string) *regexp.Regexp { return changeLine(ns, what) }
	a, err := newLock(t, cp.Config, fastConfig(ns, "watched", "a")).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := out.await(t, line(`watched acquired by a \(token (\d+)\)`)); m[2] != fmt.Sprint(a.Token()) {
		t.Errorf("acquired with token %s, want %d", m[2], a.Token())
	}
	waitInQueue(t, ctx, newLock(t, cp.Config, fastConfig(ns, "watched", "b")), ns, "watched", "b")
	out.await(t, line(`watched b queued \(position 1\)`))
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	out.await(t, line(`watched released by a`))
	out.await(t, line(`watched acquired by b \(token \d+\)`))
	out.await(t, line(`watched b left the queue`))

	// A holder that dies without releasing: its lease expires.
	z := startKlock(t, cp.Kubeconfig, append([]string{"-n", ns, "-l", "dead", "-i", "z"}, fast...), "sleep", "60")
	out.await(t, line(`dead acquired by z \(token \d+\)`))
	_ = z.Process.Kill()
	_ = z.wait(t, 10*time.Second)
	out.await(t, line(`dead expired: z abandoned`))
	t.Logf("klock status -w printed:\n%s", out.all())

	w.stop(t)
	if s := w.errs.all(); strings.Contains(s, "klock:") {
		t.Errorf("klock status -w complained:\n%s", s)
	}
}

// klock status -w rides out an API server it cannot reach: it says so, and
// reports what happened meanwhile once it reaches it again.
func TestStatusWatchSurvivesAnOutage(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	p, err := newAPIProxy(t)
	if err != nil {
		t.Fatal(err)
	}
	w := startStatusWatch(t, p.kubeconfig, "-n", ns, "outage")
	w.out.await(t, regexp.MustCompile(`^outage +1 +free `))
	p.Cut()
	h, err := newLock(t, cp.Config, fastConfig(ns, "outage", "x")).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.Release(ctx) }()
	w.errs.await(t, regexp.MustCompile(`^klock: .*; retrying in `))
	p.Restore()
	w.out.await(t, changeLine(ns, `outage acquired by x \(token \d+\)`))
	w.stop(t)
}

func TestStatusErrorsAreOneLine(t *testing.T) {
	ns := namespace(t)
	kubeconfig, _, err := cp.AddUser("status-nobody")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: []string{"--kubeconfig", kubeconfig, "-n", ns}, want: "klock status needs get, list and watch on leases (API group coordination.k8s.io) in namespace " + ns + ": grant them"},
		{args: []string{"--kubeconfig", kubeconfig, "-A", "-w"}, want: "in every namespace (-A): grant them with a ClusterRole"},
		{args: []string{"--kubeconfig", cp.Kubeconfig, "--bogus"}, want: "unknown flag: --bogus"},
		{args: []string{"--kubeconfig", cp.Kubeconfig, "--context", "nope"}, want: `context "nope" does not exist`},
	} {
		t.Run(strings.Join(tc.args[2:], " "), func(t *testing.T) {
			k := startKlockRaw(t, nil, append([]string{"status"}, tc.args...)...)
			if code := k.wait(t, 30*time.Second); code != 125 {
				t.Fatalf("exit code %d, want 125; stderr: %s", code, k.stderr.String())
			}
			assertOneLine(t, k.stderr.String(), tc.want)
		})
	}
}

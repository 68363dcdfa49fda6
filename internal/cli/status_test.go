package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/klock-io/klock/klock"
)

var t0 = time.Date(2026, 1, 5, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) *metav1.MicroTime {
	t := metav1.NewMicroTime(t0.Add(d))
	return &t
}

func TestStatusFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want statusOptions
	}{
		{name: "none", want: statusOptions{}},
		{name: "kubectl's flags, after the name too", args: []string{"backup", "-n", "prod", "--context", "c", "--kubeconfig", "/k"},
			want: statusOptions{Name: "backup", Namespace: "prod", Context: "c", Kubeconfig: "/k"}},
		{name: "long forms", args: []string{"--all-namespaces", "--output=yaml"}, want: statusOptions{AllNamespaces: true, Output: "yaml"}},
		{name: "short forms", args: []string{"-A", "-w"}, want: statusOptions{AllNamespaces: true, Watch: true}},
		{name: "json", args: []string{"-o", "json", "x"}, want: statusOptions{Output: "json", Name: "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := parseStatus("klock", tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, *got); diff != "" {
				t.Errorf("options (-want,+got):\n%s", diff)
			}
		})
	}
}

func TestStatusBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: []string{"--bogus"}, want: "unknown flag: --bogus (see klock status --help)"},
		{args: []string{"-o", "wide"}, want: `-o "wide" is not an output format: give json or yaml`},
		{args: []string{"-w", "-o", "json"}, want: "-w prints changes as lines of text"},
		{args: []string{"-A", "-n", "x"}, want: "-A and -n x contradict each other"},
		{args: []string{"-A", "backup"}, want: "-A and the lock name backup contradict each other"},
		{args: []string{"a", "b"}, want: "klock status takes one lock name at most, not 2: a b"},
		{args: []string{"Not_A_Name"}, want: `invalid lock name "Not_A_Name"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			err := Execute(context.Background(), append([]string{"status"}, tc.args...), Streams{Out: &out, Err: &out}, nil)
			var exit *ExitError
			if !errors.As(err, &exit) || exit.Code != ExitFailure || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want exit %d mentioning %q", err, ExitFailure, tc.want)
			}
			var stderr bytes.Buffer
			if code := Exit(err, &stderr); code != ExitFailure || strings.Count(stderr.String(), "\n") != 1 || out.Len() != 0 {
				t.Errorf("Exit printed %q and returned %d; output %q", stderr.String(), code, out.String())
			}
		})
	}
}

// status is a subcommand only as the first argument; a command called
// status still runs under the lock.
func TestStatusIsASubcommandOnlyFirst(t *testing.T) {
	for _, args := range [][]string{{"--", "status"}, {"-l", "x", "--", "status", "-o", "json"}, {"-l", "x", "status"}} {
		got, err, _ := parse(t, args...)
		if err != nil || got == nil || got.Command[0] != "status" {
			t.Errorf("%q: options %+v, error %v; want the command status run", args, got, err)
		}
	}
	var out bytes.Buffer
	err := Execute(context.Background(), []string{"status", "--help"}, Streams{Out: &out, Err: &out}, func(context.Context, *Options, Streams) error {
		t.Error("klock status --help ran a command")
		return nil
	})
	if err != nil || !strings.Contains(out.String(), "klock status [flags] [LOCK]") {
		t.Errorf("klock status --help: %v, printed %q", err, out.String())
	}
	for _, want := range []string{`verbs: ["get", "list", "watch"]`, "kubectl-klock", "--context"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("klock status --help does not mention %q", want)
		}
	}
}

func TestPlugin(t *testing.T) {
	for _, argv0 := range []string{"kubectl-klock", "/usr/local/bin/kubectl-klock", `kubectl-klock.exe`} {
		if !IsPlugin(argv0) {
			t.Errorf("IsPlugin(%q) = false", argv0)
		}
	}
	for _, argv0 := range []string{"klock", "/bin/klock", "kubectl-klock2"} {
		if IsPlugin(argv0) {
			t.Errorf("IsPlugin(%q) = true", argv0)
		}
	}
	for _, args := range [][]string{nil, {"--help"}, {"status", "-h"}} {
		var out bytes.Buffer
		if err := ExecutePlugin(context.Background(), args, Streams{Out: &out, Err: &out}); err != nil || !strings.Contains(out.String(), "kubectl klock status [flags] [LOCK]") {
			t.Errorf("kubectl-klock %q: %v, printed %q", args, err, out.String())
		}
	}
	err := ExecutePlugin(context.Background(), []string{"-l", "x", "--", "true"}, Streams{Out: &bytes.Buffer{}, Err: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), `unknown command "-l" for kubectl klock: the one command is status`) {
		t.Errorf("kubectl-klock -l x -- true: %v", err)
	}
}

// locksFixture is a counting lock with a holder that looks abandoned and a
// queue, and a free lock.
func locksFixture() []klock.LockStatus {
	return []klock.LockStatus{
		{
			Namespace: "team-a", Name: "backup", MaxHolders: 2, Queued: true,
			Holders: []klock.HolderStatus{
				{Identity: "web-7f9c", Lease: "backup", Since: at(-192 * time.Second), Renewed: at(-time.Second), SilentSeconds: 1.2, LeaseDurationSeconds: 15, FencingToken: 48213},
				{Identity: "web-2b4d", Lease: "backup-1", Since: at(-40 * time.Second), Renewed: at(-13 * time.Second), SilentSeconds: 16, LeaseDurationSeconds: 15, Abandoned: true},
			},
			Waiters: []klock.WaiterStatus{
				{Identity: "web-8d2e", Since: *at(-125 * time.Second)},
				{Identity: "odd\tname", Since: *at(-5 * time.Second), Abandoned: true},
			},
		},
		{Namespace: "team-b", Name: "render", MaxHolders: 1, Holders: []klock.HolderStatus{}, Waiters: []klock.WaiterStatus{}},
	}
}

func TestPrintTable(t *testing.T) {
	for _, tc := range []struct {
		name string
		all  bool
		want string
	}{
		{name: "one namespace", want: `
LOCK    MAX  ROLE        IDENTITY     SINCE  RENEWED  TOKEN  STATE
backup  2    holder      web-7f9c     3m12s  1s ago   48213  live
backup  2    holder      web-2b4d     40s    16s ago  -      abandoned
backup  2    waiting #1  web-8d2e     2m5s   -        -      live
backup  2    waiting #2  "odd\tname"  5s     -        -      abandoned
render  1    free        -            -      -        -      -
`},
		{name: "all namespaces", all: true, want: `
NAMESPACE  LOCK    MAX  ROLE        IDENTITY     SINCE  RENEWED  TOKEN  STATE
team-a     backup  2    holder      web-7f9c     3m12s  1s ago   48213  live
team-a     backup  2    holder      web-2b4d     40s    16s ago  -      abandoned
team-a     backup  2    waiting #1  web-8d2e     2m5s   -        -      live
team-a     backup  2    waiting #2  "odd\tname"  5s     -        -      abandoned
team-b     render  1    free        -            -      -        -      -
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := printTable(&out, locksFixture(), t0, tc.all); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(strings.TrimPrefix(tc.want, "\n"), out.String()); diff != "" {
				t.Errorf("table (-want,+got):\n%s", diff)
			}
		})
	}
}

// A holder whose clock runs ahead of the reader's has held the lock for
// no time yet, not for a negative time.
func TestPrintTableClockAhead(t *testing.T) {
	var out bytes.Buffer
	locks := []klock.LockStatus{{Namespace: "n", Name: "l", MaxHolders: 1, Holders: []klock.HolderStatus{{Identity: "x", Lease: "l", Since: at(time.Minute), Renewed: at(time.Minute)}}}}
	if err := printTable(&out, locks, t0, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "holder  x         0s     0s ago") {
		t.Errorf("table:\n%s", out.String())
	}
}

// The JSON and YAML forms are {"locks": [...]} with klock.LockStatus's
// field names, the schema the README promises.
func TestPrintStatusJSONAndYAML(t *testing.T) {
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			if err := printStatus(&out, format, locksFixture(), t0, false); err != nil {
				t.Fatal(err)
			}
			raw := out.Bytes()
			if format == "yaml" {
				var err error
				if raw, err = yaml.YAMLToJSON(raw); err != nil {
					t.Fatal(err)
				}
			}
			var got struct {
				Locks []map[string]any `json:"locks"`
			}
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("%v in %s", err, out.String())
			}
			if len(got.Locks) != 2 {
				t.Fatalf("%d locks, want 2: %s", len(got.Locks), out.String())
			}
			l := got.Locks[0]
			holders, _ := l["holders"].([]any)
			waiters, _ := l["waiters"].([]any)
			if l["namespace"] != "team-a" || l["name"] != "backup" || l["maxHolders"] != 2.0 || l["queued"] != true || len(holders) != 2 || len(waiters) != 2 {
				t.Fatalf("first lock %v", l)
			}
			h := holders[0].(map[string]any)
			for _, k := range []string{"identity", "lease", "since", "renewed", "silentSeconds", "leaseDurationSeconds", "fencingToken", "abandoned"} {
				if _, ok := h[k]; !ok {
					t.Errorf("a holder lacks %q: %v", k, h)
				}
			}
			if w := waiters[0].(map[string]any); w["identity"] != "web-8d2e" || w["since"] != "2026-01-05T09:57:55.000000Z" || w["abandoned"] != false {
				t.Errorf("first waiter %v", w)
			}
			if free := got.Locks[1]; free["holders"] == nil || free["waiters"] == nil {
				t.Errorf("a free lock has %v, want empty lists, not null", free)
			}
		})
	}
	var out bytes.Buffer
	if err := printStatus(&out, "json", nil, t0, false); err != nil || out.String() != "{\n  \"locks\": []\n}\n" {
		t.Errorf("no locks: %q, %v", out.String(), err)
	}
}

func TestFillTokens(t *testing.T) {
	lease := func(name, rv string, acquired, renewed time.Duration, token string) coordinationv1.Lease {
		l := coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: name, ResourceVersion: rv}}
		l.Spec.HolderIdentity = &name
		l.Spec.AcquireTime, l.Spec.RenewTime = at(acquired), at(renewed)
		if token != "" {
			l.Annotations = map[string]string{klock.AnnotationFencingToken: token}
		}
		return l
	}
	leases := []coordinationv1.Lease{
		lease("fresh", "100", 0, 0, ""),                // the acquisition itself
		lease("renewed", "200", 0, time.Second, "150"), // recorded
		lease("client-go", "300", 0, time.Second, ""),  // renewed, never recorded
		lease("stale", "400", 0, 0, "7"),               // recorded: trust it
	}
	locks := klock.Locks(leases, time.Time{}, t0.Add(time.Second))
	fillTokens(locks, leases)
	got := map[string]uint64{}
	for _, l := range locks {
		got[l.Name] = l.Holders[0].FencingToken
	}
	want := map[string]uint64{"fresh": 100, "renewed": 150, "client-go": 0, "stale": 7}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tokens (-want,+got):\n%s", diff)
	}
}

func TestStatusChanges(t *testing.T) {
	h := func(id, slot string, since time.Duration, token uint64, abandoned bool) klock.HolderStatus {
		return klock.HolderStatus{Identity: id, Lease: slot, Since: at(since), FencingToken: token, Abandoned: abandoned}
	}
	w := func(id string, abandoned bool) klock.WaiterStatus {
		return klock.WaiterStatus{Identity: id, Since: *at(0), Abandoned: abandoned}
	}
	lock := func(holders []klock.HolderStatus, waiters ...klock.WaiterStatus) []klock.LockStatus {
		return []klock.LockStatus{{Namespace: "n", Name: "l", MaxHolders: 2, Holders: holders, Waiters: waiters}}
	}
	hs := func(h ...klock.HolderStatus) []klock.HolderStatus { return h }
	for _, tc := range []struct {
		name      string
		prev, cur []klock.LockStatus
		want      []string
	}{
		{name: "nothing", prev: lock(hs(h("a", "l", 0, 5, false))), cur: lock(hs(h("a", "l", 0, 5, false)))},
		{name: "first acquisition", prev: nil, cur: lock(hs(h("a", "l", 0, 5, false))), want: []string{"n/l acquired by a (token 5)"}},
		{name: "token unknown", prev: lock(nil), cur: lock(hs(h("a", "l", 0, 0, false))), want: []string{"n/l acquired by a"}},
		{name: "release", prev: lock(hs(h("a", "l", 0, 5, false))), cur: lock(nil), want: []string{"n/l released by a"}},
		{name: "lease deleted", prev: lock(hs(h("a", "l", 0, 5, false))), cur: nil, want: []string{"n/l released by a"}},
		{
			name: "handoff to the first waiter",
			prev: lock(hs(h("a", "l", 0, 5, false)), w("b", false), w("c", false)),
			cur:  lock(hs(h("b", "l", time.Minute, 9, false)), w("c", false)),
			// A slot that went from one acquisition straight to another
			// was taken over, not released.
			want: []string{"n/l expired: a abandoned", "n/l acquired by b (token 9)", "n/l b left the queue"},
		},
		{
			name: "release, then the waiter takes the other slot",
			prev: lock(hs(h("a", "l", 0, 5, false)), w("b", false)),
			cur:  lock(hs(h("b", "l-1", time.Minute, 9, false))),
			want: []string{"n/l released by a", "n/l acquired by b (token 9)", "n/l b left the queue"},
		},
		{name: "goes silent", prev: lock(hs(h("a", "l", 0, 5, false))), cur: lock(hs(h("a", "l", 0, 5, true))), want: []string{"n/l expired: a abandoned"}},
		{name: "an abandoned holder taken over says nothing more", prev: lock(hs(h("a", "l", 0, 5, true))), cur: lock(hs(h("b", "l", time.Minute, 9, false))), want: []string{"n/l acquired by b (token 9)"}},
		{name: "an abandoned holder cleaned up", prev: lock(hs(h("a", "l", 0, 5, true))), cur: lock(nil)},
		{
			name: "same identity, new acquisition",
			prev: lock(hs(h("a", "l", 0, 5, true))),
			cur:  lock(hs(h("a", "l", time.Minute, 9, false))),
			want: []string{"n/l acquired by a (token 9)"},
		},
		{name: "token recorded later is no change", prev: lock(hs(h("a", "l", 0, 0, false))), cur: lock(hs(h("a", "l", 0, 5, false)))},
		{
			name: "queue",
			prev: lock(hs(h("a", "l", 0, 5, false)), w("b", false), w("c", false)),
			cur:  lock(hs(h("a", "l", 0, 5, false)), w("c", false), w("d", false), w("e", false)),
			want: []string{"n/l b left the queue", "n/l d queued (position 2)", "n/l e queued (position 3)"},
		},
		{
			name: "waiter goes silent",
			prev: lock(hs(h("a", "l", 0, 5, false)), w("b", false), w("c", false)),
			cur:  lock(hs(h("a", "l", 0, 5, false)), w("b", false), w("c", true)),
			want: []string{"n/l expired: c abandoned its place in the queue (position 2)"},
		},
		{
			name: "locks apart",
			prev: []klock.LockStatus{{Namespace: "n", Name: "a"}, {Namespace: "n", Name: "b", Holders: hs(h("y", "b", 0, 2, false))}},
			cur:  []klock.LockStatus{{Namespace: "n", Name: "a", Holders: hs(h("x", "a", 0, 1, false))}, {Namespace: "n", Name: "b"}},
			want: []string{"n/a acquired by x (token 1)", "n/b released by y"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range statusChanges(tc.prev, tc.cur) {
				got = append(got, c.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("changes (-want,+got):\n%s", diff)
			}
		})
	}
}

// The watch judges each waiter by its own renewals: a waiter that stops
// renewing is abandoned after its TTL even while others keep the queue
// Lease busy.
func TestStatusWatchJudgesWaitersByTheirOwnBeat(t *testing.T) {
	queue := func(beatA, beatB int64) coordinationv1.Lease {
		entries, _ := json.Marshal([]klock.QueueEntry{
			{ID: "a", Since: *at(0), Beat: beatA, TTLSeconds: 60},
			{ID: "b", Since: *at(0), Beat: beatB, TTLSeconds: 60},
		})
		return coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Namespace: "n", Name: klock.QueueName("l"), ResourceVersion: "1",
			Labels:      map[string]string{klock.ManagedByLabel: klock.ManagedByValue},
			Annotations: map[string]string{klock.AnnotationQueue: string(entries), klock.AnnotationLock: "l"},
		}}
	}
	w := &statusWatch{v: &statusView{namespace: "n"}, beats: map[waiterKey]beatSeen{}, leases: map[string]coordinationv1.Lease{}}
	w.leases["n/l-queue"] = queue(1, 1)
	start := time.Now()
	abandoned := func(now time.Time) []bool {
		var out []bool
		for _, wt := range w.snapshot(now)[0].Waiters {
			out = append(out, wt.Abandoned)
		}
		return out
	}
	if got := abandoned(start); !cmp.Equal(got, []bool{false, false}) {
		t.Fatalf("at first: %v", got)
	}
	w.leases["n/l-queue"] = queue(2, 1) // a renews, b does not
	if got := abandoned(start.Add(30 * time.Second)); !cmp.Equal(got, []bool{false, false}) {
		t.Fatalf("after 30s: %v", got)
	}
	if got := abandoned(start.Add(61 * time.Second)); !cmp.Equal(got, []bool{false, true}) {
		t.Fatalf("after 61s, with b silent since the start: %v", got)
	}
}

// A slot held for a pod that has yet to start (gated waiting) says so.
func TestPrintTableReserved(t *testing.T) {
	since := metav1.NewMicroTime(t0.Add(-2 * time.Second))
	locks := []klock.LockStatus{{Namespace: "jobs", Name: "nightly", MaxHolders: 1, Queued: true,
		Holders: []klock.HolderStatus{{Identity: "nightly-2901", Lease: "nightly", Since: &since, Renewed: &since, SilentSeconds: 2, LeaseDurationSeconds: 15, Reserved: true}},
		Waiters: []klock.WaiterStatus{}}}
	var out bytes.Buffer
	if err := printTable(&out, locks, t0, false); err != nil {
		t.Fatal(err)
	}
	want := `LOCK     MAX  ROLE    IDENTITY      SINCE  RENEWED  TOKEN  STATE
nightly  1    holder  nightly-2901  2s     2s ago   -      reserved
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("table (-want,+got):\n%s", diff)
	}
}

package integration

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestContendingProcessesNeverOverlap(t *testing.T) {
	ns := namespace(t)
	dir := t.TempDir()
	log, marker := filepath.Join(dir, "log"), filepath.Join(dir, "inside")
	const n = 8
	var ks []*klockCmd
	for i := range n {
		name := "p" + strconv.Itoa(i)
		ks = append(ks, startKlock(t, cp.Kubeconfig, append([]string{"-n", ns, "-l", "contended"}, fast...),
			probe(log, name, "-marker", marker, "-sleep", "100ms")...))
	}
	for i, k := range ks {
		if code := k.wait(t, 2*time.Minute); code != 0 {
			t.Fatalf("klock %d exited %d: %s", i, code, k.stderr.String())
		}
	}

	events := readLog(t, log)
	var starts, ends int
	var lastEnd time.Time
	var lastToken uint64
	identities := map[string]bool{}
	for _, e := range events {
		switch e.Kind {
		case "overlap":
			t.Errorf("%s found another command inside the lock", e.Name)
		case "start":
			starts++
			if e.At.Before(lastEnd) {
				t.Errorf("%s started at %s, before the previous holder ended at %s", e.Name, e.At, lastEnd)
			}
			token, err := strconv.ParseUint(e.Fields[0], 10, 64)
			if err != nil {
				t.Fatalf("%s got fencing token %q: %v", e.Name, e.Fields[0], err)
			}
			if token <= lastToken {
				t.Errorf("%s got fencing token %d, not above the previous %d", e.Name, token, lastToken)
			}
			lastToken = token
			identities[e.Fields[1]] = true
		case "end":
			ends++
			lastEnd = e.At
		}
	}
	if starts != n || ends != n {
		t.Fatalf("got %d starts and %d ends, want %d each", starts, ends, n)
	}
	if len(identities) != n {
		t.Errorf("got %d distinct default identities, want %d: %v", len(identities), n, identities)
	}
	lease := getLease(t, ns, "contended")
	if got := holder(lease); got != "" {
		t.Errorf("lease holder after all runs = %q, want released (empty)", got)
	}
	if got := *lease.Spec.LeaseTransitions; got != n-1 {
		t.Errorf("leaseTransitions = %d, want %d", got, n-1)
	}
}

func TestReleaseHandsOverAtOnce(t *testing.T) {
	ns := namespace(t)
	log := filepath.Join(t.TempDir(), "log")
	// The default 15s lease: if the first run did not release, the second
	// could only start 15s after the first one's last renewal.
	a := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "handoff"}, probe(log, "a", "-sleep", "500ms")...)
	waitStarted(t, log, "a")
	b := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "handoff"}, probe(log, "b")...)
	if code := a.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("a exited %d: %s", code, a.stderr.String())
	}
	if code := b.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("b exited %d: %s", code, b.stderr.String())
	}
	assertAfter(t, log, "a", "b")
}

func TestTakeoverAfterHolderIsKilled(t *testing.T) {
	ns := namespace(t)
	dir := t.TempDir()
	log, pidFile := filepath.Join(dir, "log"), filepath.Join(dir, "pid")
	args := append([]string{"-n", ns, "-l", "takeover"}, fast...)
	a := startKlock(t, cp.Kubeconfig, args, probe(log, "a", "-sleep", "1h", "-pid", pidFile)...)
	waitStarted(t, log, "a")
	b := startKlock(t, cp.Kubeconfig, args, probe(log, "b")...)
	time.Sleep(500 * time.Millisecond) // let b start watching

	killed := time.Now()
	a.signal(t, syscall.SIGKILL)
	_ = a.wait(t, 10*time.Second)
	pid, err := strconv.Atoi(readFile(t, pidFile))
	if err != nil {
		t.Fatal(err)
	}
	// The command must not outlive the klock that held the lock for it.
	eventually(t, 5*time.Second, "a's command to die with it", func() bool {
		return syscall.Kill(pid, 0) == syscall.ESRCH || isZombie(pid)
	})

	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("b exited %d: %s", code, b.stderr.String())
	}
	bStart, ok := find(readLog(t, log), "start", "b")
	if !ok {
		t.Fatal("b never ran")
	}
	// a renewed at most one retry period (300ms) before it was killed, and b
	// may take over only a full lease duration (2s) after it saw that.
	if earliest := killed.Add(2*time.Second - 300*time.Millisecond); bStart.At.Before(earliest) {
		t.Errorf("b took over at %s, before a's lease could have expired (%s)", bStart.At, earliest)
	}
	if got := bStart.Fields[1]; holder(getLease(t, ns, "takeover")) != "" || got == "" {
		t.Errorf("after b: holder %q, b's identity %q", holder(getLease(t, ns, "takeover")), got)
	}
}

func TestRenewFailureStopsCommandBeforeLeaseExpires(t *testing.T) {
	ns := namespace(t)
	log := filepath.Join(t.TempDir(), "log")
	proxy, err := newAPIProxy(t)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-n", ns, "-l", "renew"}, fast...)
	a := startKlock(t, proxy.kubeconfig, args, probe(log, "a", "-sleep", "1h", "-trap")...)
	waitStarted(t, log, "a")
	b := startKlock(t, cp.Kubeconfig, args, probe(log, "b")...)
	time.Sleep(500 * time.Millisecond)

	proxy.Cut() // a can no longer reach the API server, b still can
	if code := a.wait(t, 30*time.Second); code != 124 {
		t.Fatalf("a exited %d, want 124 (lease lost); stderr: %s", code, a.stderr.String())
	}
	if !strings.Contains(a.stderr.String(), "lease lost") {
		t.Errorf("a's stderr does not say the lease was lost:\n%s", a.stderr.String())
	}
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("b exited %d: %s", code, b.stderr.String())
	}
	events := readLog(t, log)
	sig, ok := find(events, "signal", "a")
	if !ok || sig.Fields[0] != "terminated" {
		t.Fatalf("a's command was not sent SIGTERM: %+v", events)
	}
	assertAfter(t, log, "a", "b")
}

func TestSignalsAndExitCodes(t *testing.T) {
	ns := namespace(t)
	dir := t.TempDir()
	notExecutable := filepath.Join(dir, "script")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		command []string
		signal  syscall.Signal // sent to klock once the command runs
		want    int
		stderr  string
	}{
		{name: "the command's exit status passes through", command: []string{"-exit", "42"}, want: 42},
		{name: "success", command: nil, want: 0},
		{name: "SIGTERM is forwarded", command: []string{"-sleep", "1h", "-trap"}, signal: syscall.SIGTERM, want: 100 + 15},
		{name: "SIGINT is forwarded", command: []string{"-sleep", "1h", "-trap"}, signal: syscall.SIGINT, want: 100 + 2},
		{name: "SIGHUP is forwarded", command: []string{"-sleep", "1h", "-trap"}, signal: syscall.SIGHUP, want: 100 + 1},
		{name: "a command killed by a signal gives 128+N", command: []string{"-sleep", "1h"}, signal: syscall.SIGTERM, want: 128 + 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "log")
			k := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "signals"}, probe(log, "p", tc.command...)...)
			if tc.signal != 0 {
				waitStarted(t, log, "p")
				time.Sleep(100 * time.Millisecond) // let the probe install its handler
				k.signal(t, tc.signal)
			}
			if code := k.wait(t, 30*time.Second); code != tc.want {
				t.Fatalf("exit code %d, want %d; stderr: %s", code, tc.want, k.stderr.String())
			}
			if got := holder(getLease(t, ns, "signals")); got != "" {
				t.Errorf("lease holder after exit = %q, want released", got)
			}
		})
	}

	for _, tc := range []struct {
		name    string
		command []string
		want    int
		stderr  string
	}{
		{name: "command not found", command: []string{filepath.Join(dir, "missing")}, want: 127, stderr: "no such file"},
		{name: "command not executable", command: []string{notExecutable}, want: 126, stderr: "permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "signals"}, tc.command...)
			if code := k.wait(t, 30*time.Second); code != tc.want {
				t.Fatalf("exit code %d, want %d; stderr: %s", code, tc.want, k.stderr.String())
			}
			assertOneLine(t, k.stderr.String(), tc.stderr)
		})
	}

	t.Run("a signal while waiting ends the wait without running the command", func(t *testing.T) {
		log := filepath.Join(t.TempDir(), "log")
		a := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "waiting"}, probe(log, "a", "-sleep", "1h")...)
		waitStarted(t, log, "a")
		b := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "waiting"}, probe(log, "b")...)
		time.Sleep(300 * time.Millisecond)
		b.signal(t, syscall.SIGTERM)
		if code := b.wait(t, 10*time.Second); code != 128+15 {
			t.Fatalf("b exited %d, want 143; stderr: %s", code, b.stderr.String())
		}
		if _, ran := find(readLog(t, log), "start", "b"); ran {
			t.Error("b ran its command although it never got the lock")
		}
		a.signal(t, syscall.SIGTERM)
		_ = a.wait(t, 10*time.Second)
	})
}

func TestWaitLimitAndConflictExitCode(t *testing.T) {
	ns := namespace(t)
	log := filepath.Join(t.TempDir(), "log")
	a := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "busy", "-i", "the-holder"}, probe(log, "a", "-sleep", "1h", "-trap")...)
	waitStarted(t, log, "a")

	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{name: "--wait elapses", args: []string{"-w", "500ms", "-E", "7"}, want: 7},
		{name: "--timeout is --wait", args: []string{"--timeout", "0.5", "-E", "8"}, want: 8},
		{name: "--nonblock gives up at once", args: []string{"--nonblock", "-E", "0"}, want: 0},
		{name: "the default conflict exit code is 1", args: []string{"-w", "300ms"}, want: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := startKlock(t, cp.Kubeconfig, append([]string{"-n", ns, "-l", "busy"}, tc.args...), probe(log, tc.name)...)
			if code := k.wait(t, 30*time.Second); code != tc.want {
				t.Fatalf("exit code %d, want %d; stderr: %s", code, tc.want, k.stderr.String())
			}
			if _, ran := find(readLog(t, log), "start", tc.name); ran {
				t.Error("the command ran without the lock")
			}
			assertOneLine(t, k.stderr.String(), `held by "the-holder"`)
		})
	}

	a.signal(t, syscall.SIGTERM)
	_ = a.wait(t, 10*time.Second)
	k := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "busy", "-w", "10s"}, probe(log, "after")...)
	if code := k.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("after the holder left: exit code %d; stderr: %s", code, k.stderr.String())
	}
}

func TestCleanupLeaseAndLabels(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()

	k := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "kept", "--labels", "team=data,tier=batch"}, probeBin)
	if code := k.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, k.stderr.String())
	}
	lease := getLease(t, ns, "kept")
	want := map[string]string{"app.kubernetes.io/managed-by": "klock", "team": "data", "tier": "batch"}
	if diff := cmp.Diff(want, lease.Labels); diff != "" {
		t.Errorf("labels (-want,+got):\n%s", diff)
	}
	if holder(lease) != "" {
		t.Errorf("holder = %q, want released", holder(lease))
	}

	for _, flag := range []string{"--cleanup-lease", "-u", "--unlock"} {
		k := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "cleaned", flag}, probeBin)
		if code := k.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("%s: exit code %d; stderr: %s", flag, code, k.stderr.String())
		}
		_, err := cp.Client.CoordinationV1().Leases(ns).Get(ctx, "cleaned", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("%s: lease still there (err %v)", flag, err)
		}
	}
}

func TestFencingTokenGrowsAcrossDeletion(t *testing.T) {
	ns := namespace(t)
	log := filepath.Join(t.TempDir(), "log")
	var last uint64
	for i, args := range [][]string{{"--cleanup-lease"}, {"--cleanup-lease"}, nil, nil, {"--cleanup-lease"}, nil} {
		name := "run" + strconv.Itoa(i)
		k := startKlock(t, cp.Kubeconfig, append([]string{"-n", ns, "-l", "fenced"}, args...), probe(log, name)...)
		if code := k.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("%s: exit code %d; stderr: %s", name, code, k.stderr.String())
		}
		start, _ := find(readLog(t, log), "start", name)
		token, err := strconv.ParseUint(start.Fields[0], 10, 64)
		if err != nil {
			t.Fatalf("%s: token %q: %v", name, start.Fields[0], err)
		}
		if token <= last {
			t.Errorf("%s (%v): token %d not above the previous %d", name, args, token, last)
		}
		last = token
	}
}

func TestArgvReachesTheCommandVerbatim(t *testing.T) {
	ns := namespace(t)
	out := filepath.Join(t.TempDir(), "argv")
	want := []string{"two words", "", "'single'", `"double"`, "$HOME", "*", "line\nbreak", "--", "-x", "--flag=1", "\xff\xfe not utf-8", `back\slash`, "tab\there"}
	k := startKlock(t, cp.Kubeconfig, []string{"-n", ns}, append([]string{probeBin, "-argv", out, "--"}, want...)...)
	if code := k.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, k.stderr.String())
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSuffix(readFile(t, out), "\n"), "\n") {
		b, err := hex.DecodeString(line)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(b))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("argv (-want,+got):\n%s", diff)
	}
}

func TestNamespaceAndIdentity(t *testing.T) {
	ns, other := namespace(t), namespace(t)
	for _, tc := range []struct {
		name          string
		env           []string
		args          []string
		wantNamespace string
		wantIdentity  string // "" means generated
	}{
		{name: "from the environment", env: []string{"KLOCK_NAMESPACE=" + ns, "KLOCK_IDENTITY=from-env"}, wantNamespace: ns, wantIdentity: "from-env"},
		{name: "flags win over the environment", env: []string{"KLOCK_NAMESPACE=" + other, "KLOCK_IDENTITY=from-env"}, args: []string{"-n", ns, "-i", "from-flag"}, wantNamespace: ns, wantIdentity: "from-flag"},
		{name: "-g ignores KLOCK_IDENTITY", env: []string{"KLOCK_NAMESPACE=" + ns, "KLOCK_IDENTITY=from-env"}, args: []string{"-g"}, wantNamespace: ns},
		{name: "the kubeconfig context's namespace, else default", wantNamespace: "default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "log")
			k := startKlockEnv(t, cp.Kubeconfig, tc.env, append([]string{"-l", "env"}, tc.args...), probe(log, "q")...)
			if code := k.wait(t, 30*time.Second); code != 0 {
				t.Fatalf("exit code %d; stderr: %s", code, k.stderr.String())
			}
			start, _ := find(readLog(t, log), "start", "q")
			identity, lease, namespace := start.Fields[1], start.Fields[2], start.Fields[3]
			if lease != "env" || namespace != tc.wantNamespace {
				t.Errorf("lease %s/%s, want %s/env", namespace, lease, tc.wantNamespace)
			}
			if tc.wantIdentity != "" && identity != tc.wantIdentity {
				t.Errorf("identity %q, want %q", identity, tc.wantIdentity)
			}
			if tc.wantIdentity == "" && (identity == "from-env" || identity == "-") {
				t.Errorf("identity %q, want a generated one", identity)
			}
			getLease(t, tc.wantNamespace, "env") // the Lease is where klock said
		})
	}
}

func TestSameIdentityIsShared(t *testing.T) {
	ns := namespace(t)
	log := filepath.Join(t.TempDir(), "log")
	args := append([]string{"-n", ns, "-l", "shared", "-i", "same"}, fast...)
	a := startKlock(t, cp.Kubeconfig, args, probe(log, "a", "-sleep", "1h", "-trap")...)
	waitStarted(t, log, "a")

	// b shares a's identity: it gets the lock at once.
	b := startKlock(t, cp.Kubeconfig, append(args, "--nonblock"), probe(log, "b", "-sleep", "3s")...)
	waitStarted(t, log, "b")

	// a leaves first; the lock stays with b, which still runs.
	a.signal(t, syscall.SIGTERM)
	_ = a.wait(t, 10*time.Second)
	if got := holder(getLease(t, ns, "shared")); got != "same" {
		t.Errorf("holder after a left = %q, want %q (b still runs)", got, "same")
	}
	other := append([]string{"-n", ns, "-l", "shared"}, fast...)
	c := startKlock(t, cp.Kubeconfig, append(other, "--nonblock", "-E", "9"), probe(log, "c")...)
	if code := c.wait(t, 30*time.Second); code != 9 {
		t.Fatalf("c got the lock while b held it (exit %d); stderr: %s", code, c.stderr.String())
	}
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("b exited %d: %s", code, b.stderr.String())
	}
	// Nobody releases a shared lock: it frees itself a lease duration later.
	d := startKlock(t, cp.Kubeconfig, other, probe(log, "d")...)
	if code := d.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("d exited %d: %s", code, d.stderr.String())
	}
	assertAfter(t, log, "b", "d")
}

func TestNestedKlockGivesTheInnerLease(t *testing.T) {
	ns := namespace(t)
	log := filepath.Join(t.TempDir(), "log")
	inner := append([]string{klockBin, "--kubeconfig", cp.Kubeconfig, "-n", ns, "-l", "inner", "--"}, probe(log, "p")...)
	k := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "outer"}, inner...)
	if code := k.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, k.stderr.String())
	}
	start, _ := find(readLog(t, log), "start", "p")
	if lease := start.Fields[2]; lease != "inner" {
		t.Errorf("the inner command saw KLOCK_LEASE=%s, want inner", lease)
	}
}

func TestPermissionDeniedSaysWhatToGrant(t *testing.T) {
	ns := namespace(t)
	kubeconfig, _, err := cp.AddUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	k := startKlock(t, kubeconfig, []string{"-n", ns, "-l", "forbidden"}, probeBin)
	if code := k.wait(t, 30*time.Second); code != 125 {
		t.Fatalf("exit code %d, want 125; stderr: %s", code, k.stderr.String())
	}
	assertOneLine(t, k.stderr.String(), "grant get, create, update and watch")
}

func TestBadInputIsOneClearLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: []string{"-l", "Not_A_Name", "--", "true"}, want: `invalid lease name "Not_A_Name"`},
		{args: []string{"--lease-duration", "1500ms", "--", "true"}, want: "whole number of seconds"},
		{args: []string{"--lease-duration", "15s", "--renew-deadline", "20s", "--", "true"}, want: "below the lease duration 15s"},
		{args: []string{"-s", "NOPE", "--", "true"}, want: `unknown signal "NOPE"`},
		{args: []string{"-w", "soon", "--", "true"}, want: `"soon" is not a duration`},
		{args: []string{"--labels", "novalue", "--", "true"}, want: "not key=value"},
		{args: []string{"-E", "300", "--", "true"}, want: "conflict-exit-code"},
		{args: []string{"-l", "x"}, want: "no command given"},
		{args: []string{"--no-such-flag", "--", "true"}, want: "unknown flag: --no-such-flag"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			k := startKlockRaw(t, nil, append([]string{"--kubeconfig", cp.Kubeconfig}, tc.args...)...)
			if code := k.wait(t, 30*time.Second); code != 125 {
				t.Fatalf("exit code %d, want 125; stderr: %s", code, k.stderr.String())
			}
			assertOneLine(t, k.stderr.String(), tc.want)
		})
	}
}

func assertOneLine(t *testing.T, stderr, want string) {
	t.Helper()
	if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "klock: ") || !strings.Contains(stderr, want) {
		t.Errorf("stderr = %q, want one line starting %q and containing %q", stderr, "klock: ", want)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	fields := strings.Fields(string(b))
	return len(fields) > 2 && fields[2] == "Z"
}

// klock as PID 1 of a PID namespace, as in a container: it reaps orphans,
// and a signal to it (PID 1 gets none it does not handle) reaches the
// command.
func TestAsPID1(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	ns := namespace(t)
	asPID1 := func(t *testing.T, command ...string) *klockCmd {
		t.Helper()
		argv := append([]string{"--user", "--map-root-user", "--pid", "--fork", "--mount-proc", klockBin, "--kubeconfig", cp.Kubeconfig, "-n", ns, "--"}, command...)
		return startProcess(t, nil, unshare, argv...)
	}

	t.Run("orphans are reaped", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "zombies")
		// The subshell leaves an orphan sleep behind; once it exits it is
		// a zombie unless PID 1, here klock, waits for it.
		k := asPID1(t, "sh", "-c", `(sleep 0.2 &); sleep 1; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l > "$1"`, "sh", out)
		if code := k.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit code %d; stderr: %s", code, k.stderr.String())
		}
		if got := readFile(t, out); got != "0" {
			t.Errorf("%s zombies in klock's PID namespace, want 0", got)
		}
	})

	t.Run("SIGTERM is forwarded", func(t *testing.T) {
		log := filepath.Join(t.TempDir(), "log")
		k := asPID1(t, probe(log, "p", "-sleep", "1h", "-trap")...)
		waitStarted(t, log, "p")
		time.Sleep(100 * time.Millisecond) // let the probe install its handler
		// unshare --fork waits for its child, klock, which is PID 1 inside.
		children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", k.Process.Pid, k.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(children)))
		if err != nil {
			t.Fatalf("unshare's children: %q", children)
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := k.wait(t, 30*time.Second); code != 100+15 {
			t.Fatalf("exit code %d, want 115 (the probe's answer to TERM); stderr: %s", code, k.stderr.String())
		}
		if sig, ok := find(readLog(t, log), "signal", "p"); !ok || sig.Fields[0] != "terminated" {
			t.Error("the command did not get SIGTERM")
		}
	})
}

// Without the watch verb a waiter falls back to reading the Lease every
// retry period, and still gets the lock.
func TestWaitingWithoutWatchPermission(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	kubeconfig, _, err := cp.AddUser("no-watch")
	if err != nil {
		t.Fatal(err)
	}
	rbac := cp.Client.RbacV1()
	if _, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "leases"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "leases"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "leases"},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: "no-watch"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A 15s lease: b must notice the release by reading, not by expiry.
	log := filepath.Join(t.TempDir(), "log")
	a := startKlock(t, cp.Kubeconfig, []string{"-n", ns, "-l", "polled"}, probe(log, "a", "-sleep", "1s")...)
	waitStarted(t, log, "a")
	b := startKlock(t, kubeconfig, []string{"-n", ns, "-l", "polled", "--retry-period", "300ms"}, probe(log, "b")...)
	if code := a.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("a exited %d: %s", code, a.stderr.String())
	}
	if code := b.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("b, which may not watch, exited %d: %s", code, b.stderr.String())
	}
	assertAfter(t, log, "a", "b")
}

// A command that ignores --signal is KILLed before others may take the
// lock (lease duration − renew deadline after the loss), without -k: two
// commands never run at once, even when one does not stop.
func TestLostLockKillsACommandThatIgnoresTheSignal(t *testing.T) {
	ns := namespace(t)
	dir := t.TempDir()
	log, pidFile := filepath.Join(dir, "log"), filepath.Join(dir, "pid")
	proxy, err := newAPIProxy(t)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-n", ns, "-l", "stubborn"}, fast...)
	a := startKlock(t, proxy.kubeconfig, args, "sh", "-c", `trap "" TERM; echo $$ > "$0"; exec sleep 3600`, pidFile)
	eventually(t, 30*time.Second, "a's command to start", func() bool { _, err := os.Stat(pidFile); return err == nil })
	// b records whether a's command was still alive when b's started.
	b := startKlock(t, cp.Kubeconfig, args, "sh", "-c", `kill -0 "$(cat "$0")" 2>/dev/null && echo alive > "$1"; exit 0`, pidFile, log)
	time.Sleep(500 * time.Millisecond)

	proxy.Cut()
	if code := a.wait(t, 30*time.Second); code != 124 {
		t.Fatalf("a exited %d, want 124 (lease lost); stderr: %s", code, a.stderr.String())
	}
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("b exited %d: %s", code, b.stderr.String())
	}
	if _, err := os.Stat(log); err == nil {
		t.Error("b's command started while a's, which ignores TERM, was still running")
	}
}

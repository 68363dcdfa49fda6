package process

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// timeout bounds every wait for something the test expects to happen; it
// is generous, as the machine may be busy.
const timeout = 30 * time.Second

func run(t *testing.T, r *Runner, ctx context.Context, argv ...string) (int, error) {
	t.Helper()
	if r.StopSignal == 0 {
		r.StopSignal = syscall.SIGTERM
	}
	return r.Run(ctx, argv, os.Environ())
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	notExecutable := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Found and executable, so that only exec itself, in the supervisor,
	// can tell that it cannot be run.
	noInterpreter := filepath.Join(dir, "no-shebang")
	if err := os.WriteFile(noInterpreter, []byte("echo hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		argv []string
		want int
		err  string
	}{
		{name: "success", argv: []string{"true"}, want: 0},
		{name: "the command's status", argv: []string{"sh", "-c", "exit 3"}, want: 3},
		{name: "killed by a signal", argv: []string{"sh", "-c", "kill -KILL $$"}, want: 128 + 9},
		{name: "killed by TERM", argv: []string{"sh", "-c", "kill -TERM $$"}, want: 128 + 15},
		{name: "not found on PATH", argv: []string{"no-such-command-anywhere"}, want: 127, err: "executable file not found"},
		{name: "not found by path", argv: []string{filepath.Join(dir, "missing")}, want: 127, err: "no such file"},
		{name: "not executable", argv: []string{notExecutable}, want: 126, err: "permission denied"},
		{name: "exec fails in the supervisor", argv: []string{noInterpreter}, want: 126, err: `cannot run "` + noInterpreter + `": exec format error`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, err := run(t, &Runner{}, context.Background(), tc.argv...)
			if code != tc.want {
				t.Errorf("exit code %d, want %d", code, tc.want)
			}
			var start *StartError
			if tc.err == "" && err != nil || tc.err != "" && (!errors.As(err, &start) || start.Code != tc.want || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "\n")) {
				t.Errorf("error %v, want one line containing %q", err, tc.err)
			}
		})
	}
}

func TestTheCommandSeesNothingOfTheSupervisor(t *testing.T) {
	code, err := run(t, &Runner{}, context.Background(), "sh", "-c",
		`test -z "${`+markerKey+`+set}" && ! test -e /proc/$$/fd/3 && ! test -e /proc/$$/fd/4`)
	if err != nil || code != 0 {
		t.Errorf("exit code %d, error %v: the command got the supervisor's marker or pipes", code, err)
	}
}

// Run returns only once every process of the command has exited, so that
// klock holds the lock until then.
func TestRunWaitsForEveryProcess(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script string // leaves a process behind that writes "done" to $0 a little later
	}{
		{name: "a background job", script: `(sleep 0.3; echo done > "$0") & exit 0`},
		{name: "an orphan of a subshell", script: `( (sleep 0.3; echo done > "$0") & ); exit 0`},
		{name: "a process in a session of its own", script: `setsid -f sh -c 'sleep 0.3; echo done > "$0"' "$0"; exit 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			code, err := run(t, &Runner{}, context.Background(), "sh", "-c", tc.script, out)
			if err != nil || code != 0 {
				t.Fatalf("exit code %d, error %v", code, err)
			}
			if b, _ := os.ReadFile(out); strings.TrimSpace(string(b)) != "done" {
				t.Errorf("Run returned while a process of the command was still running (it wrote %q)", b)
			}
		})
	}
}

// trapScript records the signals it gets in $0.out, and exits 7 on TERM.
const trapScript = `trap 'echo HUP >> "$0.out"' HUP; trap 'echo USR1 >> "$0.out"' USR1; trap 'echo TERM >> "$0.out"; exit 7' TERM; echo $$ > "$0.ready"; while :; do sleep 0.05; done`

// ignoreTermScript ignores TERM, and runs until it is killed.
const ignoreTermScript = `trap '' TERM; echo $$ > "$0.ready"; while :; do sleep 0.05; done`

// A script runs as the command itself, or in a process that the command
// leaves behind when it exits at once with 0.
type wrapper struct {
	name    string
	argv    func(script, base string) []string
	command bool // the script is the command
}

// code is the exit code of Run when the script ends with code.
func (w wrapper) code(code int) int {
	if w.command {
		return code
	}
	return 0
}

var wrappers = []wrapper{
	{name: "the command", command: true, argv: func(script, base string) []string {
		return []string{"sh", "-c", script, base}
	}},
	{name: "a background job of a command that exited", argv: func(script, base string) []string {
		return []string{"sh", "-c", `sh -c "$1" "$0" & exit 0`, base, script}
	}},
	{name: "a process in a session of its own", argv: func(script, base string) []string {
		return []string{"setsid", "-f", "sh", "-c", script, base}
	}},
}

// running is a Run whose script has started.
type running struct {
	out  string   // what the script recorded
	pid  int      // the script's
	done chan int // Run's exit code
}

func start(t *testing.T, r *Runner, ctx context.Context, argv func(script, base string) []string, script string) *running {
	t.Helper()
	base := filepath.Join(t.TempDir(), "script")
	done := make(chan int, 1)
	go func() {
		code, err := run(t, r, ctx, argv(script, base)...)
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(base + ".ready")
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			// A Run that fails the test may have left the script behind.
			t.Cleanup(func() {
				if t.Failed() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			})
			return &running{out: base + ".out", pid: pid, done: done}
		}
		if time.Now().After(deadline) {
			t.Fatal("the script did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *running) recorded() string {
	b, _ := os.ReadFile(r.out)
	return strings.Join(strings.Fields(string(b)), " ")
}

func (r *running) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-r.done:
		return code
	case <-time.After(timeout):
		t.Fatalf("Run did not return; the script recorded %q", r.recorded())
		return 0
	}
}

func TestSignalsAreForwarded(t *testing.T) {
	for _, w := range wrappers {
		t.Run("to "+w.name, func(t *testing.T) {
			sigs := make(chan os.Signal, 3)
			p := start(t, &Runner{Signals: sigs}, context.Background(), w.argv, trapScript)
			sigs <- syscall.SIGHUP
			sigs <- syscall.SIGUSR1
			time.Sleep(200 * time.Millisecond) // the shell runs traps between commands
			sigs <- syscall.SIGTERM
			if code, want := p.wait(t), w.code(7); code != want {
				t.Errorf("exit code %d, want %d", code, want)
			}
			if got := p.recorded(); got != "HUP USR1 TERM" {
				t.Errorf("the script saw %q, want HUP USR1 TERM", got)
			}
		})
	}
}

func TestCancelSendsStopSignalThenKill(t *testing.T) {
	for _, w := range wrappers[:2] {
		t.Run("stop signal to "+w.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sigs := make(chan os.Signal, 1)
			p := start(t, &Runner{StopSignal: syscall.SIGUSR1, Signals: sigs}, ctx, w.argv, trapScript)
			cancel()
			eventually(t, "the script to get USR1", func() bool { return p.recorded() == "USR1" })
			time.Sleep(200 * time.Millisecond)
			select {
			case code := <-p.done:
				t.Fatalf("Run returned (%d) while the script, which traps USR1, still ran", code)
			default:
			}
			// Without KillAfter, Run waits however long.
			sigs <- syscall.SIGKILL
			if code, want := p.wait(t), w.code(128+9); code != want {
				t.Errorf("exit code %d, want %d", code, want)
			}
			if got := p.recorded(); got != "USR1" {
				t.Errorf("the script saw %q, want USR1", got)
			}
		})
	}
	for _, tc := range []struct {
		name   string
		w      wrapper
		stop   syscall.Signal
		script string
		want   int
	}{
		{name: "kill after, to the command", w: wrappers[0], stop: syscall.SIGUSR1, script: trapScript, want: 128 + 9},
		{name: "kill after, to a background job that ignores TERM", w: wrappers[1], stop: syscall.SIGTERM, script: ignoreTermScript, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p := start(t, &Runner{StopSignal: tc.stop, KillAfter: 200 * time.Millisecond}, ctx, tc.w.argv, tc.script)
			cancel()
			if code := p.wait(t); code != tc.want {
				t.Errorf("exit code %d, want %d", code, tc.want)
			}
			if err := syscall.Kill(p.pid, 0); err != syscall.ESRCH {
				t.Errorf("the script still runs after Run returned (kill 0: %v)", err)
			}
		})
	}
}

// helper starts the test binary as a program that runs `sh -c script base`
// under a Runner, as klock does; wrap, if given, runs it instead.
func helper(t *testing.T, script, base string, wrap ...string) *exec.Cmd {
	t.Helper()
	argv := append(wrap, os.Args[0], base)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), helperEnv+"="+script)
	stderr, err := os.Create(base + ".stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// When klock dies, even by SIGKILL, no process of its command survives it:
// killed alone, or with its whole process group, as timeout -s KILL does.
func TestEveryProcessDiesWithKlock(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill func(klock int) error
	}{
		{name: "klock alone", kill: func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }},
		{name: "klock's process group", kill: func(pid int) error { return syscall.Kill(-pid, syscall.SIGKILL) }},
	} {
		t.Run(tc.name, func(t *testing.T) { testEveryProcessDies(t, tc.kill) })
	}
}

func testEveryProcessDies(t *testing.T, kill func(klock int) error) {
	base := filepath.Join(t.TempDir(), "killed")
	pids := base + ".pids"
	// The command, a background job, an orphan, and a process in a new
	// session, each writing its pid.
	const script = `echo $$ >> "$0.pids"
sleep 60 & echo $! >> "$0.pids"
( sleep 60 & echo $! >> "$0.pids" )
setsid -f sh -c 'echo $$ >> "$0.pids"; exec sleep 60' "$0"
wait`
	cmd := helper(t, script, base)

	var all []int
	eventually(t, "the command and its processes to start", func() bool {
		b, _ := os.ReadFile(pids)
		all = nil
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return false
			}
			all = append(all, pid)
		}
		return len(all) == 4
	})
	t.Cleanup(func() {
		if t.Failed() {
			for _, pid := range all {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	if !slices.ContainsFunc(all, leadsSession) {
		t.Fatal("no process of the command runs in a session of its own; the test needs setsid -f")
	}

	if err := kill(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, pid := range all {
		eventually(t, "process "+strconv.Itoa(pid)+" to die with klock", func() bool {
			return syscall.Kill(pid, 0) == syscall.ESRCH || isZombie(pid)
		})
	}
}

// A signal that was ignored when klock started (nohup, a background job of
// a shell) stays ignored, for klock and for the command.
func TestIgnoredSignalsStayIgnored(t *testing.T) {
	for _, tc := range []struct {
		name string // for the shell's trap
		sig  syscall.Signal
	}{{"HUP", syscall.SIGHUP}, {"INT", syscall.SIGINT}} {
		sig := tc.sig
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join(t.TempDir(), "ignored")
			const script = `grep '^SigIgn:' /proc/self/status > "$0.sigign"; echo $$ > "$0.ready"; while ! test -e "$0.go"; do sleep 0.05; done`
			cmd := helper(t, script, base, "sh", "-c", `trap '' `+tc.name+`; exec "$0" "$@"`)
			eventually(t, "the command to start", func() bool { _, err := os.Stat(base + ".ready"); return err == nil })

			// To klock's process group, as a hangup or Ctrl-C would.
			if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			if err := os.WriteFile(base+".go", nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				b, _ := os.ReadFile(base + ".stderr")
				t.Errorf("klock ended with %v, want exit 0; stderr: %s", err, b)
			}

			b, err := os.ReadFile(base + ".sigign")
			if err != nil {
				t.Fatal(err)
			}
			mask, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(string(b), "SigIgn:")), 16, 64)
			if err != nil {
				t.Fatalf("reading %q: %v", b, err)
			}
			if mask&(1<<(sig-1)) == 0 {
				t.Errorf("the command does not ignore %v (SigIgn %016x)", sig, mask)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name string
		stat string
		want proc
		ok   bool
	}{
		{name: "plain", stat: "42 (sh) S 7 42 42 0 -1", want: proc{pid: 42, ppid: 7, pgrp: 42}, ok: true},
		{name: "spaces and parentheses in comm", stat: "42 (a) S 1 1 (b) R 7 9 9 0", want: proc{pid: 42, ppid: 7, pgrp: 9}, ok: true},
		{name: "truncated", stat: "42 (sh) S 7", ok: false},
		{name: "no comm", stat: "42 sh S 7 42", ok: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseStat(42, tc.stat)
			if got != tc.want || ok != tc.ok {
				t.Errorf("parseStat(%q) = %+v, %v; want %+v, %v", tc.stat, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:]), nil
}

func isZombie(pid int) bool {
	f, err := statFields(pid)
	return err != nil || f[0] == "Z"
}

func leadsSession(pid int) bool {
	f, err := statFields(pid)
	return err == nil && f[3] == strconv.Itoa(pid)
}

package process

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func run(t *testing.T, r *Runner, ctx context.Context, argv ...string) (int, error) {
	t.Helper()
	if r.StopSignal == 0 {
		r.StopSignal = syscall.SIGTERM
	}
	return r.Run(ctx, argv, os.Environ())
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		argv []string
		want int
		err  string
	}{
		{name: "success", argv: []string{"true"}, want: 0},
		{name: "the command's status", argv: []string{"sh", "-c", "exit 42"}, want: 42},
		{name: "killed by a signal", argv: []string{"sh", "-c", "kill -KILL $$"}, want: 128 + 9},
		{name: "not found on PATH", argv: []string{"no-such-command-anywhere"}, want: 127, err: "executable file not found"},
		{name: "not found by path", argv: []string{filepath.Join(dir, "missing")}, want: 127, err: "no such file"},
		{name: "not executable", argv: []string{script}, want: 126, err: "permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, err := run(t, &Runner{}, context.Background(), tc.argv...)
			if code != tc.want {
				t.Errorf("exit code %d, want %d", code, tc.want)
			}
			var start *StartError
			if tc.err == "" && err != nil || tc.err != "" && (!errors.As(err, &start) || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// trapScript records the signals it gets in out, and exits 7 on TERM.
const trapScript = `trap 'echo HUP >> "$0.out"' HUP; trap 'echo USR1 >> "$0.out"' USR1; trap 'echo TERM >> "$0.out"; exit 7' TERM; echo ready > "$0.ready"; while :; do sleep 0.05; done`

func startTrap(t *testing.T, r *Runner, ctx context.Context) (string, chan int) {
	t.Helper()
	base := filepath.Join(t.TempDir(), "trap")
	done := make(chan int, 1)
	go func() {
		code, err := run(t, r, ctx, "sh", "-c", trapScript, base)
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(base + ".ready"); err == nil {
			return base + ".out", done
		}
		if time.Now().After(deadline) {
			t.Fatal("the script did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSignalsAreForwarded(t *testing.T) {
	sigs := make(chan os.Signal, 3)
	out, done := startTrap(t, &Runner{Signals: sigs}, context.Background())
	sigs <- syscall.SIGHUP
	sigs <- syscall.SIGUSR1
	time.Sleep(200 * time.Millisecond) // the shell runs traps between commands
	sigs <- syscall.SIGTERM
	if code := <-done; code != 7 {
		t.Errorf("exit code %d, want 7 from the TERM trap", code)
	}
	b, _ := os.ReadFile(out)
	if got := strings.Fields(string(b)); strings.Join(got, " ") != "HUP USR1 TERM" {
		t.Errorf("the command saw %v, want HUP USR1 TERM", got)
	}
}

func TestCancelSendsStopSignalThenKill(t *testing.T) {
	t.Run("stop signal", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		sigs := make(chan os.Signal, 1)
		out, done := startTrap(t, &Runner{StopSignal: syscall.SIGUSR1, Signals: sigs}, ctx)
		cancel()
		time.Sleep(300 * time.Millisecond)
		b, _ := os.ReadFile(out)
		if strings.TrimSpace(string(b)) != "USR1" {
			t.Errorf("the command saw %q, want USR1", b)
		}
		select {
		case code := <-done:
			t.Fatalf("the command exited (%d) on a signal it traps", code)
		default:
		}
		// Without KillAfter, Run waits for the command however long.
		sigs <- syscall.SIGKILL
		if code := <-done; code != 128+9 {
			t.Errorf("exit code %d, want 137", code)
		}
	})
	t.Run("kill after", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		_, done := startTrap(t, &Runner{StopSignal: syscall.SIGUSR1, KillAfter: 200 * time.Millisecond}, ctx)
		cancel()
		select {
		case code := <-done:
			if code != 128+9 {
				t.Errorf("exit code %d, want 137", code)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the command was not killed")
		}
	})
}

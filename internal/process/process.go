// Package process runs the command klock guards: in its own process group,
// with signals forwarded, a stop signal and an optional KILL when the lock
// is lost, orphans reaped when klock is PID 1, and the command's exit status
// passed through.
package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/term"
)

// Exit codes for a command that could not be started, as in env(1) and
// timeout(1).
const (
	ExitCannotInvoke = 126
	ExitNotFound     = 127
)

// Forwarded are the signals klock passes on to the command.
var Forwarded = []os.Signal{
	syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP,
	syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
}

// StartError reports a command that could not be started; Code is 126 or 127.
type StartError struct {
	Code int
	Err  error
}

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// Runner starts commands with the process's standard streams.
type Runner struct {
	// Signals delivers the signals to forward to the command.
	Signals <-chan os.Signal
	// StopSignal is sent to the command when the context passed to Run ends.
	StopSignal syscall.Signal
	// KillAfter, when positive, sends SIGKILL that long after StopSignal if
	// the command is still running.
	KillAfter time.Duration
}

// Run runs argv with env until it exits, and returns its exit code: its own
// status, or 128+N if signal N ended it. When ctx ends, the command gets
// StopSignal (and SIGKILL after KillAfter); Run still waits for it to exit.
// The command dies with SIGKILL if klock itself dies, so that it can never
// outlive the lock that guards it.
func (r *Runner) Run(ctx context.Context, argv, env []string) (int, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		code := ExitNotFound
		if errors.Is(err, fs.ErrPermission) {
			code = ExitCannotInvoke
		}
		return code, &StartError{Code: code, Err: fmt.Errorf("cannot run %q: %w", argv[0], err)}
	}

	// Signals typed at a terminal already reach the whole foreground
	// process group; the command stays in it so that it can still read the
	// terminal. Elsewhere (containers, CronJobs) the command gets a group of
	// its own, so that forwarded signals reach its children too.
	interactive := term.IsTerminal(int(os.Stdin.Fd()))
	reaper := os.Getpid() == 1

	started := make(chan error, 1)
	exited := make(chan int, 1)
	var proc *os.Process
	go func() {
		// Pdeathsig fires when the thread that forked the child exits, so
		// that thread stays locked to this goroutine, which lives as long
		// as the child does.
		runtime.LockOSThread()
		p, err := os.StartProcess(path, argv, &os.ProcAttr{
			Env:   env,
			Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
			Sys:   &syscall.SysProcAttr{Setpgid: !interactive, Pdeathsig: syscall.SIGKILL},
		})
		proc = p
		started <- err
		if err != nil {
			runtime.UnlockOSThread()
			return
		}
		if reaper {
			exited <- reapUntil(p.Pid)
		} else {
			exited <- wait(p)
		}
	}()
	if err := <-started; err != nil {
		return ExitCannotInvoke, &StartError{Code: ExitCannotInvoke, Err: fmt.Errorf("cannot run %q: %w", argv[0], err)}
	}

	send := func(sig syscall.Signal) {
		if interactive {
			_ = proc.Signal(sig)
		} else {
			_ = syscall.Kill(-proc.Pid, sig) // the whole group
		}
	}
	done := ctx.Done()
	var kill <-chan time.Time
	for {
		select {
		case code := <-exited:
			return code, nil
		case sig := <-r.Signals:
			s, ok := sig.(syscall.Signal)
			if !ok || (interactive && (s == syscall.SIGINT || s == syscall.SIGQUIT)) {
				continue // the terminal delivered it to the command already
			}
			send(s)
		case <-done:
			done = nil
			send(r.StopSignal)
			if r.KillAfter > 0 {
				kill = time.After(r.KillAfter)
			}
		case <-kill:
			send(syscall.SIGKILL)
		}
	}
}

func wait(p *os.Process) int {
	state, err := p.Wait()
	if err != nil {
		return ExitCannotInvoke
	}
	return exitCode(state.Sys().(syscall.WaitStatus))
}

func exitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

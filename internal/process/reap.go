package process

import (
	"os"
	"os/signal"
	"syscall"
)

// reapUntil is used when klock is PID 1 in a container: orphaned processes
// are re-parented to it and stay zombies unless it waits for them. It waits
// for any child on every SIGCHLD and returns the exit code of pid.
//
// Waiting for any child also takes the exit status of children that
// something else in klock started and waits for; client-go starts none
// unless an exec credential plugin is configured, which in-cluster
// credentials never are.
func reapUntil(pid int) int {
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	defer signal.Stop(sigchld)
	for {
		for {
			var ws syscall.WaitStatus
			got, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err == syscall.EINTR {
				continue
			}
			if err != nil || got <= 0 {
				break // nothing more to reap now
			}
			if got == pid {
				return exitCode(ws)
			}
		}
		<-sigchld
	}
}

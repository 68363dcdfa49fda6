package chaos

import (
	"fmt"
	"testing"
	"time"
)

// i. The holder's command is a shell that starts a probe in the
// background and exits when its foreground probe does, leaving the
// background one, a grandchild of klock's, running. The lock guards the
// command, every process of it: the next holder may start only once the
// grandchild is gone too, whether klock stops it or waits for it. Asserted:
// the waiter starts after the grandchild has exited (the grandchild holds
// the lockfile shared with its shell's foreground probe, so a waiter that
// starts beside it records an overlap; and after its recorded end when it
// records one), within the grandchild's own run time, a retry period and
// slack of the foreground probe's end, and the holder's klock exits with
// the shell's status, 0.
func TestGrandchildren(t *testing.T) {
	s := newScenario(t)
	tm := fast
	args := append([]string{"-l", "grandchildren", "--debug"}, tm.args()...)
	const bgRun = 3 * time.Second
	a, pids := s.holderWithGrandchild("a", args, bgRun.String(), "300ms", false)
	b := s.klock("b", cp.Kubeconfig, args, s.probe("b")...)
	a.expectExit(t, 30*time.Second, 0, "the shell's status")
	b.expectExit(t, 30*time.Second, 0, "b ran its command")
	events := s.events()
	checkExclusion(t, events)

	aEnd, bStart := s.must(events, "end", "a"), s.must(events, "start", "b")
	bgStart := s.must(events, "start", "a-bg")
	bgEnd, bgEnded := find(events, "end", "a-bg")
	if bgEnded && bStart.At.Before(bgEnd.At) {
		t.Errorf("b started at %s, while a's background grandchild still ran (it ended at %s)", bStart.At.Format(time.StampMicro), bgEnd.At.Format(time.StampMicro))
	}
	leftRunning := alive(pids[1])
	if leftRunning {
		t.Errorf("a's background grandchild (pid %d) still runs after b ran", pids[1])
	}
	took := bStart.At.Sub(aEnd.At)
	atMost(t, "b's start after a's foreground probe ended", took, bgStart.At.Add(bgRun).Sub(aEnd.At)+tm.retry+slack)

	did := "waited for the grandchild to exit, then released"
	_, signalled := find(events, "signal", "a-bg")
	switch {
	case leftRunning:
		did = "released while the grandchild still ran"
	case signalled:
		did = "stopped the grandchild (TERM) once the shell exited, then released"
	case !bgEnded:
		did = "killed the grandchild once the shell exited, then released"
	}
	report(t, "i. command leaves a background grandchild running", did,
		fmt.Sprintf("next holder after the grandchild, ≤ its %s run + retry %s (+%s slack)", bgRun, tm.retry, slack),
		fmt.Sprintf("next holder started %s after the shell's foreground probe ended", ms(took)))
}

package chaos

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// holderWithGrandchild starts klock as name with a shell for command: the
// shell starts one probe in the background and one in the foreground, so
// that klock's command has grandchildren; with wait it then waits for
// both, without it exits when the foreground one does and leaves the other
// running. The probes share the lockfile (-shared): any other command that
// starts while either lives records an overlap. It returns klock and the
// PIDs of the shell and both probes, once both probes run.
func (s *scenario) holderWithGrandchild(name string, args []string, bgSleep, fgSleep string, wait bool) (*klockRun, []int) {
	s.t.Helper()
	bg := s.probe(name+"-bg", "-shared", "-trap", "-sleep", bgSleep, "-pid", s.path(name+"-bg.pid"))
	fg := s.probe(name, "-shared", "-trap", "-sleep", fgSleep, "-pid", s.path(name+".pid"))
	script := fmt.Sprintf("echo $$ > %s; %s & %s", shell([]string{s.path(name + "-sh.pid")}), shell(bg), shell(fg))
	if wait {
		script += "; wait"
	}
	k := s.klock(name, cp.Kubeconfig, args, "sh", "-c", script)
	s.waitFor("start", name+"-bg", time.Minute)
	s.waitFor("start", name, time.Minute)
	return k, []int{s.pid(name + "-sh.pid"), s.pid(name + "-bg.pid"), s.pid(name + ".pid")}
}

// waitGone waits up to timeout for every PID to be gone, and returns how
// long that took and those still alive.
func waitGone(pids []int, since time.Time, timeout time.Duration) (time.Duration, []int) {
	for {
		var left []int
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 || time.Since(since) > timeout {
			return time.Since(since), left
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// b. The holder's klock is killed with SIGKILL while its command (a shell
// with a background and a foreground probe) runs. klock can do nothing
// after SIGKILL, so what it set up before must end every process of the
// command: a command that outlived its lock would run beside the next
// holder's. The waiter takes over once the Lease expires: no earlier than
// a lease duration after the holder's last renewal (at most one retry
// period before the kill), no later than a lease duration plus one retry
// period after the kill.
func TestHolderKilled(t *testing.T) {
	s := newScenario(t)
	tm := fast
	args := append([]string{"-l", "killed", "--debug"}, tm.args()...)
	a, pids := s.holderWithGrandchild("a", args, "1h", "1h", true)
	b := s.klock("b", cp.Kubeconfig, args, s.probe("b")...)
	time.Sleep(500 * time.Millisecond) // let b start watching

	killed := time.Now()
	a.signal(t, syscall.SIGKILL)
	a.wait(t, 10*time.Second)
	// The Lease may go to b a lease duration after the last renewal: by
	// then at the latest the command must be gone.
	goneIn, left := waitGone(pids, killed, tm.lease)
	if len(left) > 0 {
		t.Errorf("processes %v of the killed holder's command (shell %d, probes %d, %d) still run %s after klock was killed", left, pids[0], pids[1], pids[2], ms(goneIn))
	}

	bStart := s.waitFor("start", "b", tm.lease+tm.retry+slack+5*time.Second)
	b.expectExit(t, 30*time.Second, 0, "b ran its probe")
	events := s.events()
	checkExclusion(t, events)

	// a renewed at most one retry period before the kill, and b may take
	// over only a full lease duration after it saw that renewal.
	took := bStart.At.Sub(killed)
	if earliest := tm.lease - tm.retry; took < earliest {
		t.Errorf("b took over %s after the kill, before a's lease could have expired (%s)", ms(took), earliest)
	}
	atMost(t, "the takeover after the kill", took, tm.lease+tm.retry+slack)

	did := fmt.Sprintf("command's 3 processes gone %s after the kill", ms(goneIn))
	if len(left) > 0 {
		did = fmt.Sprintf("%d of the command's 3 processes survived the kill", len(left))
	}
	report(t, "b. holder SIGKILLed (shell with a grandchild)", did+"; the waiter took over",
		fmt.Sprintf("takeover in [lease−retry, lease+retry] = [%s, %s] (+%s slack)", tm.lease-tm.retry, tm.lease+tm.retry, slack),
		"takeover "+ms(took)+" after the kill")
}

// h. A run that may wait only briefly (-w 2s -E 0: skip if somebody else
// holds the lock) starts a lease duration and more after the holder was
// killed. The Lease then is stale: nobody renewed it for longer than its
// duration. A klock process that starts now has not watched it age, so it
// must judge the staleness by the API server's clock, not count a full
// lease duration from its own first read: it takes the Lease and runs its
// command instead of skipping the run.
func TestRunAfterCrash(t *testing.T) {
	s := newScenario(t)
	// The lease is longer than the wait, so that a run that counts the
	// lease duration from its own first read gives up before it expires.
	tm := timings{lease: 5 * time.Second, renew: 3 * time.Second, retry: 500 * time.Millisecond}
	args := append([]string{"-l", "crashed", "--debug"}, tm.args()...)
	a := s.klock("a", cp.Kubeconfig, args, s.probe("a", "-sleep", "1h", "-pid", s.path("a.pid"))...)
	s.waitFor("start", "a", time.Minute)
	aPID := s.pid("a.pid")
	killed := time.Now()
	a.signal(t, syscall.SIGKILL)
	a.wait(t, 10*time.Second)
	if _, left := waitGone([]int{aPID}, killed, tm.lease); len(left) > 0 {
		t.Fatalf("a's probe survived klock's SIGKILL")
	}

	time.Sleep(time.Until(killed.Add(tm.lease + 3*time.Second)))
	c := s.klock("c", cp.Kubeconfig, append(args, "-w", "2s", "-E", "0"), s.probe("c")...)
	code := c.wait(t, 30*time.Second)
	events := s.events()
	cStart, ran := find(events, "start", "c")
	if code != 0 || !ran {
		t.Errorf("klock -w 2s -E 0 started %s after the holder was killed exited %d and ran its command: %v; want it to take the stale Lease and run it; its output:\n%s",
			tm.lease+3*time.Second, code, ran, c.output())
	}
	checkExclusion(t, events)
	did, measured := "skipped the run (took the Lease for held)", "-"
	if ran {
		did = "took the stale Lease and ran the command"
		measured = "command started " + ms(cStart.At.Sub(c.started)) + " after klock"
	}
	report(t, "h. -w 2s -E 0 run a lease + 3s after the holder's SIGKILL", did,
		fmt.Sprintf("runs within the 2s wait (lease %s)", tm.lease), measured)
}

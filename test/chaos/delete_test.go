package chaos

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// f. The Lease is deleted (by an administrator, without preconditions)
// while it is held. The promise: a delete is a forced unlock. The holder's
// next renewal, due within one retry period, finds the Lease gone; klock
// then reports the lock lost, sends TERM to its command, writes nothing
// more (it must not create the Lease again) and exits 124. The next holder
// creates the Lease anew, and its fencing token, etcd's revision, is
// higher than the old holder's: whatever the lock protects can refuse the
// old holder's late writes.
//
// Without a waiter, asserted: TERM within a retry period (+ slack) of the
// delete, exit 124, no Lease written afterwards by the old holder, a new
// run gets the lock at once with a higher token and no overlap.
//
// With a waiter, which may take the Lease the moment it sees it deleted,
// asserted: the same for the old holder, a higher token for the waiter,
// and, since a forced unlock lets the new holder in before the old one has
// noticed, that they overlap by no more than the old holder's notice: a
// retry period (+ slack).
func TestLeaseDeleted(t *testing.T) {
	tm := fast
	deleteLease := func(t *testing.T, s *scenario) time.Time {
		t.Helper()
		at := time.Now()
		if err := cp.Client.CoordinationV1().Leases(s.ns).Delete(context.Background(), "deleted", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		return at
	}
	// oldHolderStops checks how a, whose Lease was deleted at deleted,
	// stopped, and returns when its command got TERM after the delete.
	oldHolderStops := func(t *testing.T, s *scenario, a *klockRun, deleted time.Time) time.Duration {
		t.Helper()
		a.expectExit(t, 30*time.Second, 124, "the lock was lost")
		events := s.events()
		sig := s.must(events, "signal", "a")
		if sig.Fields[0] != "terminated" {
			t.Errorf("a's command got %s, want TERM", sig.Fields[0])
		}
		notice := sig.At.Sub(deleted)
		atMost(t, "TERM to the old holder's command after the delete", notice, tm.retry+slack)
		return notice
	}

	t.Run("no waiter", func(t *testing.T) {
		s := newScenario(t)
		args := append([]string{"-l", "deleted", "--debug"}, tm.args()...)
		a := s.klock("a", cp.Kubeconfig, args, s.probe("a", "-sleep", "1h", "-trap")...)
		s.waitFor("start", "a", time.Minute)
		time.Sleep(2 * tm.retry) // a renews
		deleted := deleteLease(t, s)
		notice := oldHolderStops(t, s, a, deleted)
		if l := s.lease("deleted"); l != nil {
			t.Errorf("the Lease exists again after the old holder exited (holder %q): it wrote after it lost the lock", holder(l))
		}

		b := s.klock("b", cp.Kubeconfig, args, s.probe("b")...)
		b.expectExit(t, 30*time.Second, 0, "b ran its command")
		events := s.events()
		checkExclusion(t, events)
		got := s.must(events, "start", "b").At.Sub(b.started)
		atMost(t, "b's command to start on a deleted Lease", got, tm.retry+slack)
		report(t, "f. Lease deleted while held, no waiter", "holder's command got TERM, klock exited 124; a new run got the lock with a higher token",
			fmt.Sprintf("TERM ≤ retry %s after the delete (+%s slack)", tm.retry, slack),
			fmt.Sprintf("TERM %s after the delete", ms(notice)))
	})

	t.Run("a waiter", func(t *testing.T) {
		s := newScenario(t)
		args := append([]string{"-l", "deleted", "--debug"}, tm.args()...)
		a := s.klock("a", cp.Kubeconfig, args, s.probe("a", "-sleep", "1h", "-trap")...)
		s.waitFor("start", "a", time.Minute)
		b := s.klock("b", cp.Kubeconfig, args, s.probe("b", "-sleep", "1s")...)
		time.Sleep(2 * tm.retry) // a renews, b watches
		deleted := deleteLease(t, s)
		notice := oldHolderStops(t, s, a, deleted)
		b.expectExit(t, 30*time.Second, 0, "b ran its command")

		events := s.events()
		checkTokens(t, events)
		aEnd, bStart := s.must(events, "end", "a"), s.must(events, "start", "b")
		overlap := max(0, aEnd.At.Sub(bStart.At))
		atMost(t, "the forced unlock's overlap of the old and the new holder's commands", overlap, tm.retry+slack)
		if t.Failed() {
			t.Logf("the probe log:\n%s", dump(events))
		}
		did := "b started after a's command ended"
		if overlap > 0 {
			did = "forced unlock: b started before a's command ended"
		}
		report(t, "f. Lease deleted while held, 1 waiter", did+"; a exited 124; b's token higher",
			fmt.Sprintf("TERM ≤ retry %s after the delete; overlap ≤ retry (+%s slack)", tm.retry, slack),
			fmt.Sprintf("TERM %s after the delete; overlap %s", ms(notice), ms(overlap)))
	})
}

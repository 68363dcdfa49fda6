package chaos

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/test/framework"
)

// leaseWrite matches, for FaultProxy.DropResponse, an update or create of a
// Lease that gives it to holder ("" for a release) and that kind accepts.
// An acquisition writes the same acquireTime and renewTime, a renewal a new
// renewTime only.
func leaseWrite(verb, holder string, kind func(*coordinationv1.LeaseSpec) bool) func(*framework.Call) bool {
	return func(c *framework.Call) bool {
		return c.Resource == "leases" && c.Verb == verb && c.Lease != nil &&
			c.Lease.Spec.HolderIdentity != nil && *c.Lease.Spec.HolderIdentity == holder && kind(&c.Lease.Spec)
	}
}

// leaseDelete matches a delete of a Lease.
func leaseDelete(c *framework.Call) bool { return c.Resource == "leases" && c.Verb == "delete" }

func acquisition(s *coordinationv1.LeaseSpec) bool {
	return s.AcquireTime != nil && s.RenewTime != nil && s.AcquireTime.Equal(s.RenewTime)
}

func renewal(s *coordinationv1.LeaseSpec) bool {
	return s.AcquireTime != nil && s.RenewTime != nil && !s.AcquireTime.Equal(s.RenewTime)
}

func anyWrite(*coordinationv1.LeaseSpec) bool { return true }

// e. The API server commits a write of the holder's and its answer is
// lost (the proxy forwards the request, throws the answer away and resets
// the stream). With klock's default 15s lease, a Lease left held until it
// expires is told clearly apart from a prompt handoff.
//
// What klock does: after a lost acquisition it reads the Lease back, finds
// its own identity with the renewTime it wrote, and takes it again (no
// wait for expiry); after a lost renewal its next renewal conflicts, it
// re-reads, finds the Lease still its own and renews; after a lost
// release (or delete, with --cleanup-lease) it reports the error, but the
// Lease is free, and the waiter, which watches it, starts at once.
// Asserted: the holder's command starts and ends as if nothing happened
// (exit 0), the waiter starts after it ended and within a retry period
// (+ slack) of that, far below the lease duration, and the exclusion
// invariant holds.
func TestLostResponses(t *testing.T) {
	tm := defaults
	for _, tc := range []struct {
		name string
		// lost picks the write whose answer is lost.
		lost func(*framework.Call) bool
		// exists: the Lease exists (released) before a starts, so that
		// its acquisition is an update rather than a create.
		exists bool
		args   []string
		sleep  string // how long a's command runs
	}{
		{name: "acquisition (create)", lost: leaseWrite("create", "a", acquisition), sleep: "1s"},
		{name: "acquisition (update)", lost: leaseWrite("update", "a", acquisition), exists: true, sleep: "1s"},
		// Runs past a renewal, due a retry period after the acquisition.
		{name: "renewal", lost: leaseWrite("update", "a", renewal), sleep: (tm.retry + 2*time.Second).String()},
		{name: "release", lost: leaseWrite("update", "", anyWrite), sleep: "1s"},
		{name: "delete (--cleanup-lease)", lost: leaseDelete, args: []string{"--cleanup-lease"}, sleep: "1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScenario(t)
			args := append(append([]string{"-l", "lost", "--debug"}, tm.args()...), tc.args...)
			if tc.exists {
				free := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "lost"}, Spec: coordinationv1.LeaseSpec{
					HolderIdentity: new(""), LeaseDurationSeconds: new(int32(1)),
				}}
				if _, err := cp.Client.CoordinationV1().Leases(s.ns).Create(context.Background(), free, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			proxy := s.faultProxy("a")
			drop := proxy.DropResponse(tc.lost)
			a := s.klock("a", proxy.Kubeconfig, append(args, "-i", "a"), s.probe("a", "-sleep", tc.sleep)...)
			aStart := s.waitFor("start", "a", time.Minute)
			b := s.klock("b", cp.Kubeconfig, append(args, "-i", "b"), s.probe("b")...)
			a.expectExit(t, time.Minute, 0, "the command's own status: the lost answer must cost nothing")
			select {
			case <-drop.Fired():
			default:
				t.Fatalf("the answer to the %s was never dropped: klock did not write it", tc.name)
			}
			b.expectExit(t, time.Minute, 0, "b ran its command")
			events := s.events()
			checkExclusion(t, events)

			// A lost acquisition must not leave a waiting for its own
			// Lease to expire.
			startDelay := aStart.At.Sub(a.started)
			atMost(t, "a's command to start", startDelay, tm.retry+slack)
			aEnd, bStart := s.must(events, "end", "a"), s.must(events, "start", "b")
			handoff := bStart.At.Sub(aEnd.At)
			atMost(t, "the handoff after a's command ended", handoff, tm.retry+slack)
			if l := s.lease("lost"); l != nil && holder(l) != "" {
				t.Errorf("the Lease is still held by %q after both ran", holder(l))
			}
			report(t, "e. answer to a committed "+tc.name+" lost", "holder ran and exited 0; the waiter got the lock at once",
				fmt.Sprintf("handoff ≤ retry %s (+%s slack), lease %s", tm.retry, slack, tm.lease),
				fmt.Sprintf("holder's command started %s after klock; handoff %s", ms(startDelay), ms(handoff)))
		})
	}
}

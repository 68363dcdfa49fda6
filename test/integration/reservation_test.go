package integration

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/klock-io/klock/klock"
)

// reservation is fastConfig for a contender that reserves the lock for
// identity, as the webhook's gate controller does for a pod.
func reservation(ns, name, identity string) klock.Config {
	cfg := fastConfig(ns, name, identity)
	cfg.Reservation = "uid-of-" + identity
	return cfg
}

// cuttable returns a copy of config whose Lease writes fail once cut is
// set, as a process that has died stops writing.
func cuttable(config *rest.Config, cut *atomic.Bool) *rest.Config {
	c := rest.CopyConfig(config)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTrip(func(r *http.Request) (*http.Response, error) {
			if cut.Load() && leaseWrite(r) {
				return nil, errors.New("the process is gone (injected)")
			}
			return rt.RoundTrip(r)
		})
	})
	return c
}

// The process a lock was reserved for takes the reservation over as a new
// hold of its own: nobody gets in between, the reservation ends and
// writes no more, the fencing token grows, and the holder's release gives
// the lock to the next at once (it does not leave it to the reserver as
// to another process under its identity).
func TestReservationHandover(t *testing.T) {
	ns := namespace(t)
	r, err := newLock(t, cp.Config, reservation(ns, "deploy", "pod-a")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if l := getLease(t, ns, "deploy"); holder(l) != "pod-a" || l.Annotations[klock.AnnotationReservation] != "uid-of-pod-a" {
		t.Fatalf("reserved Lease: holder %q, annotations %v", holder(l), l.Annotations)
	}

	list, err := cp.Client.CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if locks := klock.Locks(list.Items, time.Time{}, time.Now()); len(locks) != 1 || len(locks[0].Holders) != 1 || !locks[0].Holders[0].Reserved {
		t.Errorf("klock status does not show the reservation: %+v", locks)
	}

	// Another contender queues behind the reservation.
	other := newLock(t, cp.Config, fastConfig(ns, "deploy", "cli"))
	otherCtx, stopOther := context.WithCancel(context.Background())
	defer stopOther()
	otherGot := make(chan *klock.Hold, 1)
	go func() {
		h, err := other.Acquire(otherCtx)
		if err == nil {
			otherGot <- h
		}
		close(otherGot)
	}()
	eventually(t, 5*time.Second, "the other contender to queue", func() bool { return len(queueOf(t, ns, "deploy")) == 1 })

	// The pod's own klock starts.
	h, err := newLock(t, cp.Config, fastConfig(ns, "deploy", "pod-a")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.Reentrant() {
		t.Error("the takeover of a reservation counted as a re-entrant join")
	}
	if h.Token() <= r.Token() {
		t.Errorf("the holder's token %d is not above the reservation's %d", h.Token(), r.Token())
	}
	select {
	case <-r.Lost():
		if !errors.Is(r.Err(), klock.ErrTakenOver) {
			t.Errorf("the reservation ended with %v, want ErrTakenOver", r.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reservation did not notice the takeover")
	}
	if err := r.Release(context.Background()); err != nil {
		t.Errorf("releasing a reservation taken over: %v", err)
	}
	// A few renewals later the holder still holds, alone and unmarked.
	time.Sleep(time.Second)
	if err := h.Err(); err != nil {
		t.Fatalf("the holder lost the lock after the takeover: %v", err)
	}
	if l := getLease(t, ns, "deploy"); holder(l) != "pod-a" || l.Annotations[klock.AnnotationReservation] != "" {
		t.Fatalf("after the takeover: holder %q, annotations %v", holder(l), l.Annotations)
	}
	select {
	case <-otherGot:
		t.Fatal("the other contender got the lock while the pod held it")
	default:
	}

	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l := getLease(t, ns, "deploy"); holder(l) == "pod-a" {
		t.Fatal("the holder left the Lease held on release, as if the reservation still shared it")
	}
	select {
	case oh, ok := <-otherGot:
		if !ok {
			t.Fatal("the other contender gave up")
		}
		_ = oh.Release(context.Background())
	case <-time.After(10 * time.Second):
		t.Fatal("the other contender did not get the released lock")
	}
}

// A reservation asked for again (a new leader of the gate controller)
// after its pod took the lock over must not join the pod's hold: it would
// mark the Lease as reserved again, and renew it after the pod has gone.
func TestReservationAfterTakeoverIsRefused(t *testing.T) {
	ns := namespace(t)
	r, err := newLock(t, cp.Config, reservation(ns, "job", "pod-b")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release(context.Background())
	h, err := newLock(t, cp.Config, fastConfig(ns, "job", "pod-b")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(context.Background())
	before := getLease(t, ns, "job").ResourceVersion
	for _, try := range []func(*klock.Lock) (*klock.Hold, error){
		func(l *klock.Lock) (*klock.Hold, error) { return l.TryAcquire(context.Background()) },
		func(l *klock.Lock) (*klock.Hold, error) { return l.Acquire(context.Background()) },
	} {
		again, err := try(newLock(t, cp.Config, reservation(ns, "job", "pod-b")))
		if !errors.Is(err, klock.ErrTakenOver) {
			if again != nil {
				_ = again.Release(context.Background())
			}
			t.Fatalf("reserving a lock its pod holds: %v, want ErrTakenOver", err)
		}
	}
	if after := getLease(t, ns, "job").ResourceVersion; after != before && h.Err() != nil {
		t.Errorf("the refused reservation wrote the Lease (%s → %s) and the holder lost it: %v", before, after, h.Err())
	}
	if l := getLease(t, ns, "job"); l.Annotations[klock.AnnotationReservation] != "" {
		t.Errorf("the refused reservation marked the Lease: %v", l.Annotations)
	}
}

// The reserver's release and the takeover may race: whichever writes
// first, the pod ends up holding the lock alone, and its release frees it.
func TestReservationReleaseRacesTakeover(t *testing.T) {
	ns := namespace(t)
	for range 8 {
		r, err := newLock(t, cp.Config, reservation(ns, "race", "pod-c")).Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		released := make(chan error, 1)
		go func() { released <- r.Release(context.Background()) }()
		h, err := newLock(t, cp.Config, fastConfig(ns, "race", "pod-c")).Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := <-released; err != nil {
			t.Fatalf("release of the reservation: %v", err)
		}
		time.Sleep(700 * time.Millisecond) // two renewal intervals
		if err := h.Err(); err != nil {
			t.Fatalf("the pod lost the lock: %v", err)
		}
		if l := getLease(t, ns, "race"); holder(l) != "pod-c" || l.Annotations[klock.AnnotationReservation] != "" {
			t.Fatalf("holder %q, annotations %v: want the pod's own hold", holder(l), l.Annotations)
		}
		if err := h.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		if l := getLease(t, ns, "race"); holder(l) != "" {
			t.Fatalf("released, the Lease is still held by %q", holder(l))
		}
	}
}

// A reserver that dies leaves the lock to the next contender a lease
// duration after its last write, as any holder does, and the pod's klock
// that starts later waits like any other.
func TestDeadReserverLeavesTheLockToExpire(t *testing.T) {
	ns := namespace(t)
	var cut atomic.Bool
	r, err := newLock(t, cuttable(cp.Config, &cut), reservation(ns, "gone", "pod-d")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cut.Store(true)
	h, err := newLock(t, cp.Config, fastConfig(ns, "gone", "cli")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.Lost():
	default:
		t.Error("the dead reserver's Hold did not report the loss before the lock went to another")
	}
	// The pod's klock starts late: the lock is another's, so it waits.
	_, err = newLock(t, cp.Config, fastConfig(ns, "gone", "pod-d")).TryAcquire(context.Background())
	if !errors.Is(err, klock.ErrHeld) {
		t.Fatalf("the pod's late klock: %v, want ErrHeld", err)
	}
	_ = h.Release(context.Background())
}

// A reservation left for a pod since deleted is not joined by the
// reservation for its successor of the same name: that would jump the
// queue, and leave the Lease to a reserver that no longer exists.
func TestReservationOfAnotherPodOfTheSameName(t *testing.T) {
	ns := namespace(t)
	old := reservation(ns, "ss", "ss-0")
	old.Reservation = "uid-of-the-deleted-pod"
	r, err := newLock(t, cp.Config, old).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release(context.Background())
	_, err = newLock(t, cp.Config, reservation(ns, "ss", "ss-0")).TryAcquire(context.Background())
	if !errors.Is(err, klock.ErrHeld) {
		t.Fatalf("the successor's reservation: %v, want ErrHeld", err)
	}
}

// A reservation taken up from a reserver that stopped (the next leader of
// the gate controller) is its own: its release frees the lock at once,
// rather than leaving it to the stopped one for a lease duration.
func TestAdoptedReservationIsReleasedAtOnce(t *testing.T) {
	ns := namespace(t)
	cfg := reservation(ns, "adopted", "pod-e")
	cfg.LeaseDuration, cfg.RenewDeadline = 30*time.Second, 20*time.Second
	first, err := newLock(t, cp.Config, cfg).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	first.HandOver()
	next, err := newLock(t, cp.Config, cfg).TryAcquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l := getLease(t, ns, "adopted"); holder(l) != "" || l.Annotations[klock.AnnotationReservation] != "" {
		t.Fatalf("released, the adopted reservation is still held by %q, annotations %v", holder(l), l.Annotations)
	}
}

// The takeover write of the pod's klock may commit with its answer lost:
// the klock still takes it for its own acquisition (a new hold, not a
// join of the reservation), the reservation ends, and the klock's release
// frees the lock at once.
func TestTakeoverWhoseAnswerIsLost(t *testing.T) {
	ns := namespace(t)
	r, err := newLock(t, cp.Config, reservation(ns, "lossy", "pod-f")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release(context.Background())
	var n atomic.Int32
	n.Store(1) // the takeover's answer
	h, err := newLock(t, loseAnswers(cp.Config, &n, leaseWrite), fastConfig(ns, "lossy", "pod-f")).Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() >= 1 {
		t.Fatal("no answer was lost: the test did not test anything")
	}
	if h.Reentrant() {
		t.Error("after a lost answer, the takeover counted as a join of the reservation")
	}
	select {
	case <-r.Lost():
		if !errors.Is(r.Err(), klock.ErrTakenOver) {
			t.Errorf("the reservation ended with %v, want ErrTakenOver", r.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reservation did not notice the takeover")
	}
	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l := getLease(t, ns, "lossy"); holder(l) != "" {
		t.Fatalf("released, the Lease is held by %q", holder(l))
	}
}

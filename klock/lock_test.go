package klock

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
)

// memLeases is an in-memory LeaseClient of one Lease, for unit tests of decisions the
// real API server cannot be made to provoke on demand, such as a write that
// commits but whose answer is lost. Behaviour against a real API server is
// tested in test/integration.
type memLeases struct {
	mu         sync.Mutex
	lease      *coordinationv1.Lease
	rv         int
	loseAnswer bool // the next write commits, then reports a timeout
}

var leasesResource = schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}

func (m *memLeases) Get(_ context.Context, name string, _ metav1.GetOptions) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease == nil {
		return nil, apierrors.NewNotFound(leasesResource, name)
	}
	return m.lease.DeepCopy(), nil
}

func (m *memLeases) write(l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	m.rv++
	// Through protobuf, as on the wire: times keep what the API server
	// keeps (MicroTime microseconds), so that "is this my own write?" is
	// tested as the server answers it.
	data, err := l.Marshal()
	if err != nil {
		return nil, err
	}
	m.lease = &coordinationv1.Lease{}
	if err := m.lease.Unmarshal(data); err != nil {
		return nil, err
	}
	m.lease.ResourceVersion = strconv.Itoa(m.rv)
	if m.loseAnswer {
		m.loseAnswer = false
		return nil, apierrors.NewTimeoutError("the answer was lost", 1)
	}
	return m.lease.DeepCopy(), nil
}

func (m *memLeases) Create(_ context.Context, l *coordinationv1.Lease, _ metav1.CreateOptions) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease != nil {
		return nil, apierrors.NewAlreadyExists(leasesResource, l.Name)
	}
	return m.write(l)
}

func (m *memLeases) Update(_ context.Context, l *coordinationv1.Lease, _ metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease == nil {
		return nil, apierrors.NewNotFound(leasesResource, l.Name)
	}
	if l.ResourceVersion != m.lease.ResourceVersion {
		return nil, apierrors.NewConflict(leasesResource, l.Name, errors.New("stale"))
	}
	return m.write(l)
}

func (m *memLeases) Delete(context.Context, string, metav1.DeleteOptions) error {
	return errors.New("not used")
}

func (m *memLeases) Watch(context.Context, metav1.ListOptions) (watch.Interface, error) {
	return nil, errors.New("not used")
}

func (m *memLeases) holder() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return *m.lease.Spec.HolderIdentity
}

func testLock(t *testing.T, leases LeaseClient, identity string) *Lock {
	t.Helper()
	l, err := New(leases, Config{Name: "x", Identity: identity, LeaseDuration: 10 * time.Second, RenewDeadline: 5 * time.Second, RetryPeriod: time.Second, Order: OrderAny})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLostAnswerIsNoReentrantAcquisition(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{loseAnswer: true}
	l := testLock(t, leases, "me")
	// The create commits, its answer is lost, and Acquire reads the Lease
	// again: the Lease names us with the renewTime it sent.
	h, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Reentrant() {
		t.Error("the acquisition whose answer was lost was taken for a re-entrant one")
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := leases.holder(); got != "" {
		t.Errorf("holder after release = %q, want released", got)
	}
}

func TestGivingUpGivesBackAnAcquisitionWhoseAnswerWasLost(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{loseAnswer: true}
	if _, err := testLock(t, leases, "me").TryAcquire(ctx); err == nil {
		t.Fatal("the lost answer was not reported")
	}
	// Nobody got a Hold: nobody would renew or release the Lease.
	if got := leases.holder(); got != "" {
		t.Errorf("holder after a failed acquisition = %q, want given back", got)
	}
}

func TestLostRenewalAnswerIsNoSharer(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{}
	l := testLock(t, leases, "me")
	h, err := l.TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	leases.loseAnswer = true
	if err := h.renew(ctx, now); err == nil {
		t.Fatal("the lost answer was not reported")
	}
	// The next renewal conflicts with the first one, which committed.
	if err := h.renew(ctx, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := leases.holder(); got != "" {
		t.Errorf("holder after release = %q: the lost renewal was taken for another holder's", got)
	}
}

func TestRenewalWritesTheWholeRecord(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{}
	h, err := testLock(t, leases, "me").TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(ctx)
	// Somebody shortens the stored duration under the holder.
	leases.mu.Lock()
	edited := leases.lease.DeepCopy()
	edited.Spec.LeaseDurationSeconds = new(int32(1))
	leases.mu.Unlock()
	if _, err := leases.Update(ctx, edited, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := h.renew(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	leases.mu.Lock()
	got := *leases.lease.Spec.LeaseDurationSeconds
	leases.mu.Unlock()
	if got != 10 {
		t.Errorf("leaseDurationSeconds after renewal = %d, want the holder's own 10", got)
	}
}

func TestSameIdentityWithAnotherDurationIsRefused(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{}
	first, err := testLock(t, leases, "me").TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release(ctx)
	other, err := New(leases, Config{Name: "x", Identity: "me", LeaseDuration: 3 * time.Second, Order: OrderAny})
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.TryAcquire(ctx)
	if err == nil || !strings.Contains(err.Error(), "lease duration of 10s, and this contender's is 3s") {
		t.Errorf("joining with another lease duration: error %v, want one naming both durations", err)
	}
}

func TestSharerGoneThenReleased(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{}
	clock := clocktesting.NewFakePassiveClock(time.Now())
	lock := func() *Lock {
		// Timings long enough that no renewal runs during the test: with
		// a fake clock it could write the very renewTime the other holder
		// wrote, which real clocks never do.
		l, err := New(leases, Config{Name: "x", Identity: "me", LeaseDuration: 10 * time.Minute, RenewDeadline: 5 * time.Minute, RetryPeriod: time.Minute, Clock: clock, Order: OrderAny})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	first, err := lock().TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clock.SetTime(clock.Now().Add(time.Second))
	second, err := lock().TryAcquire(ctx)
	if err != nil || !second.Reentrant() {
		t.Fatalf("second: %v, reentrant %v", err, second != nil && second.Reentrant())
	}
	if err := first.Release(ctx); err != nil || leases.holder() != "me" {
		t.Fatalf("first left while the second still holds: holder %q, err %v", leases.holder(), err)
	}
	// The first is gone and writes no more; a lease duration later the
	// second knows it holds the Lease alone, and gives it back.
	clock.SetTime(clock.Now().Add(10 * time.Minute))
	if err := second.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := leases.holder(); got != "" {
		t.Errorf("holder after the last sharer's release = %q, want released", got)
	}
}

func TestSameIdentityIsReentrantAndLeavesTheLease(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{}
	first, err := testLock(t, leases, "me").TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, err := testLock(t, leases, "me").TryAcquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !second.Reentrant() || second.Token() <= first.Token() {
		t.Errorf("second: reentrant %v, token %d after %d", second.Reentrant(), second.Token(), first.Token())
	}
	if err := second.Release(ctx); err != nil || leases.holder() != "me" {
		t.Errorf("the re-entrant release gave the Lease up (holder %q, err %v)", leases.holder(), err)
	}
	// first's release conflicts with second's write: it must see the
	// sharer and leave the Lease alone too.
	if err := first.Release(ctx); err != nil || leases.holder() != "me" {
		t.Errorf("the shared Lease was given up (holder %q, err %v)", leases.holder(), err)
	}
}

// A join of another process's hold (same identity) whose answer was lost is
// still a join: giving up must not release the other process's Lease, and
// recovering it must not make this process its only holder.
func TestLostJoinIsStillAJoin(t *testing.T) {
	ctx := context.Background()
	t.Run("giving up", func(t *testing.T) {
		leases := &memLeases{}
		first, err := testLock(t, leases, "me").TryAcquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Release(ctx)
		leases.loseAnswer = true
		if _, err := testLock(t, leases, "me").TryAcquire(ctx); err == nil {
			t.Fatal("the lost answer was not reported")
		}
		if got := leases.holder(); got != "me" {
			t.Errorf("holder after the joiner gave up = %q: the other process's hold was given away", got)
		}
	})
	t.Run("recovering", func(t *testing.T) {
		leases := &memLeases{}
		first, err := testLock(t, leases, "me").TryAcquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Release(ctx)
		leases.loseAnswer = true
		second, err := testLock(t, leases, "me").Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !second.Reentrant() {
			t.Error("a join recovered after its answer was lost is not re-entrant")
		}
		if err := second.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if got := leases.holder(); got != "me" {
			t.Errorf("holder after the joiner's release = %q: the other process's hold was given away", got)
		}
	})
}

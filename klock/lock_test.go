package klock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
)

// memLeases is an in-memory LeaseClient for unit tests of decisions the
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
	m.lease = l.DeepCopy()
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
	l, err := New(leases, Config{Name: "x", Identity: identity, LeaseDuration: 10 * time.Second, RenewDeadline: 5 * time.Second, RetryPeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLostAnswerIsNoReentrantAcquisition(t *testing.T) {
	ctx := context.Background()
	leases := &memLeases{loseAnswer: true}
	l := testLock(t, leases, "me")
	if _, err := l.TryAcquire(ctx); err == nil {
		t.Fatal("the lost answer was not reported")
	}
	// The create committed: the Lease names us, and we try again.
	h, err := l.TryAcquire(ctx)
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

package klock

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// AnnotationFencingToken is written by a holder with its renewals: the
// fencing token of its acquisition, for klock status to show.
const AnnotationFencingToken = "klock.io/fencing-token"

// AnnotationReservation marks a holder slot held for a process that has
// yet to start (see Config.Reservation), with the reserver's value.
const AnnotationReservation = "klock.io/reservation"

// LockStatus is what klock status shows of one lock. Its JSON form is the
// stable schema of `klock status -o json`.
type LockStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// MaxHolders is the count the lock records: 1 for a mutex.
	MaxHolders int `json:"maxHolders"`
	// Queued says the lock has a queue (its waiters come first come,
	// first served).
	Queued  bool           `json:"queued"`
	Holders []HolderStatus `json:"holders"`
	// Waiters are in queue order.
	Waiters []WaiterStatus `json:"waiters"`
}

// HolderStatus is one holder of a lock.
type HolderStatus struct {
	Identity string `json:"identity"`
	// Lease is the holder slot it holds.
	Lease string `json:"lease"`
	// Since is when it acquired the lock, by its own clock.
	Since *metav1.MicroTime `json:"since,omitempty"`
	// Renewed is when it last renewed, by its own clock.
	Renewed *metav1.MicroTime `json:"renewed,omitempty"`
	// SilentSeconds is how long it has not renewed, by the API server's
	// clock when the server said (see Config.Clock), else by the reader's.
	SilentSeconds float64 `json:"silentSeconds"`
	// LeaseDurationSeconds is how long others wait for it when silent.
	LeaseDurationSeconds int32 `json:"leaseDurationSeconds"`
	// FencingToken is its acquisition's token, once its first renewal has
	// recorded it; 0 before, or for a holder that does not record it
	// (client-go's leader election).
	FencingToken uint64 `json:"fencingToken,omitempty"`
	// Abandoned says it has been silent for its whole lease duration: it
	// looks dead, and the next contender may take its place.
	Abandoned bool `json:"abandoned"`
	// Reserved says the slot is held for a process that has yet to start
	// (a pod the scheduler holds until its lock is free), which takes it
	// over when it starts.
	Reserved bool `json:"reserved,omitempty"`
}

// WaiterStatus is one waiter in a lock's queue.
type WaiterStatus struct {
	Identity string `json:"identity"`
	// Since is when it started waiting, by its own clock.
	Since metav1.MicroTime `json:"since"`
	// Abandoned says nobody has renewed a place in the queue for longer
	// than a place lasts: its waiter looks dead. A reader that watches
	// (klock status -w) sees each waiter's own renewals.
	Abandoned bool `json:"abandoned"`
}

// Locks groups the Leases of one read (date: the API server's Date of it,
// zero if unknown; now: the reader's clock) into the locks they make, in
// namespace and name order. A Lease of no klock lock (such as client-go's
// leader election Lease) is shown as a mutex with its holder.
func Locks(leases []coordinationv1.Lease, date, now time.Time) []LockStatus {
	byKey := map[string]*LockStatus{}
	get := func(ns, name string) *LockStatus {
		key := ns + "/" + name
		if s, ok := byKey[key]; ok {
			return s
		}
		s := &LockStatus{Namespace: ns, Name: name, MaxHolders: 1, Holders: []HolderStatus{}, Waiters: []WaiterStatus{}}
		byKey[key] = s
		return s
	}
	for i := range leases {
		l := &leases[i]
		of, part := l.Annotations[AnnotationLock]
		if !part {
			of = l.Name
		}
		s := get(l.Namespace, of)
		if n := MaxHoldersOf(l); n > s.MaxHolders {
			s.MaxHolders = n
		}
		if part && l.Name == QueueName(of) {
			s.Queued = true
			entries, err := ParseQueue(l)
			if err != nil {
				continue
			}
			silent := silence(l, date, now)
			for _, e := range entries {
				ttl := time.Duration(e.TTLSeconds) * time.Second
				s.Waiters = append(s.Waiters, WaiterStatus{Identity: e.ID, Since: e.Since, Abandoned: ttl > 0 && silent >= ttl})
			}
			continue
		}
		r := recordOf(l)
		if r.holder == "" {
			continue
		}
		h := HolderStatus{
			Identity: r.holder, Lease: l.Name,
			Since: l.Spec.AcquireTime, Renewed: l.Spec.RenewTime,
			LeaseDurationSeconds: int32(r.duration / time.Second),
		}
		silent := silence(l, date, now)
		h.SilentSeconds = silent.Seconds()
		h.Abandoned = silent >= r.duration
		h.Reserved = l.Annotations[AnnotationReservation] != ""
		h.FencingToken, _ = strconv.ParseUint(l.Annotations[AnnotationFencingToken], 10, 64)
		s.Holders = append(s.Holders, h)
	}
	out := make([]LockStatus, 0, len(byKey))
	for _, s := range byKey {
		// A waiter that has just got the lock leaves the queue a moment
		// later; it is a holder already.
		s.Waiters = slices.DeleteFunc(s.Waiters, func(w WaiterStatus) bool {
			return slices.ContainsFunc(s.Holders, func(h HolderStatus) bool { return h.Identity == w.Identity })
		})
		slices.SortFunc(s.Holders, func(a, b HolderStatus) int {
			return cmp.Compare(slotIndex(s.Name, a.Lease), slotIndex(s.Name, b.Lease))
		})
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b LockStatus) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// slotIndex is the index of a holder slot of lock name, for ordering.
func slotIndex(name, lease string) int {
	if lease == name {
		return 0
	}
	n, _ := strconv.Atoi(lease[min(len(name)+1, len(lease)):])
	return n
}

// silence is how long a Lease has stood unwritten: by the API server's
// clock when its Date and stamps say (the managedFields entry that owns
// renewTime, as serverAge reads it), else from its renewTime by the
// reader's clock. The holder's clock is used only when the server's cannot
// be: a holder whose clock runs behind would otherwise look abandoned.
func silence(l *coordinationv1.Lease, date, now time.Time) time.Duration {
	if !date.IsZero() {
		var written time.Time
		for _, mf := range l.ManagedFields {
			if mf.Time != nil && mf.Time.After(written) && ownsRenewTime(mf) {
				written = mf.Time.Time
			}
		}
		if !written.IsZero() {
			return max(date.Sub(written), 0)
		}
	}
	if l.Spec.RenewTime == nil {
		return 0
	}
	return max(now.Sub(l.Spec.RenewTime.Time), 0)
}

// LeaseReader lists and watches Leases for klock status: get, list and
// watch on leases are all it needs.
type LeaseReader struct {
	rest *rest.RESTClient
}

// NewLeaseReader returns a LeaseReader that speaks protobuf and links only
// the coordination.k8s.io/v1 types.
func NewLeaseReader(config *rest.Config) (*LeaseReader, error) {
	lc, err := NewLeaseClient(config, "")
	if err != nil {
		return nil, err
	}
	return &LeaseReader{rest: lc.(*leaseClient).rest}, nil
}

// KlockLeases selects the Leases klock creates.
var KlockLeases = labels.SelectorFromSet(labels.Set{ManagedByLabel: ManagedByValue})

// List lists the Leases of namespace ("" for all namespaces) that selector
// matches, with the API server's Date of the answer (zero if unknown).
func (r *LeaseReader) List(ctx context.Context, namespace string, selector labels.Selector) (*coordinationv1.LeaseList, time.Time, error) {
	var date time.Time
	out := &coordinationv1.LeaseList{}
	opts := metav1.ListOptions{LabelSelector: selector.String()}
	err := r.rest.Get().Namespace(namespace).Resource("leases").VersionedParams(&opts, parameterCodec).
		Do(withResponseDate(ctx, &date)).Into(out)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot list leases: %w", err)
	}
	return out, date, nil
}

// Get reads one Lease, with the API server's Date of the answer.
func (r *LeaseReader) Get(ctx context.Context, namespace, name string) (*coordinationv1.Lease, time.Time, error) {
	var date time.Time
	out := &coordinationv1.Lease{}
	err := r.rest.Get().Namespace(namespace).Resource("leases").Name(name).Do(withResponseDate(ctx, &date)).Into(out)
	return out, date, err
}

// Watch watches the Leases of namespace ("" for all) that selector
// matches, from resourceVersion.
func (r *LeaseReader) Watch(ctx context.Context, namespace string, selector labels.Selector, resourceVersion string) (watch.Interface, error) {
	opts := metav1.ListOptions{LabelSelector: selector.String(), ResourceVersion: resourceVersion, Watch: true, AllowWatchBookmarks: true}
	return r.rest.Get().Namespace(namespace).Resource("leases").VersionedParams(&opts, parameterCodec).Watch(ctx)
}

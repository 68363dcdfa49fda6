package klock

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The queue of a lock is one Lease, QueueName(name), that holds its
// waiters in the order they came, as JSON in an annotation. Each waiter
// renews its own place (Beat) every QueueTTL/3; others count a place as
// abandoned once its Beat has not changed for QueueTTL by their own clocks,
// as they judge a holder's Lease, so clock skew between waiters does not
// matter. Only the waiters whose turn it is write when a holder leaves:
// the others watch.
const (
	// AnnotationQueue holds the waiters, in order (see QueueEntry).
	AnnotationQueue = "klock.io/queue"
	// AnnotationLock names the lock a holder slot or a queue belongs to,
	// on every Lease of a lock but its first.
	AnnotationLock = "klock.io/lock"
	// AnnotationMaxHolders records how many holders a lock allows, on its
	// holder slots and its queue, so that contenders that disagree on it
	// are told. Absent means 1.
	AnnotationMaxHolders = "klock.io/max-holders"
	// maxQueueTTL bounds how long a silent place lasts, whatever it says.
	maxQueueTTL = time.Hour
	// maxQueue bounds the waiters of one lock: the queue is one
	// annotation, and the API server keeps an object's annotations under
	// 256 KiB.
	maxQueue = 500
)

// QueueEntry is one waiter's place in a lock's queue, as stored in
// AnnotationQueue. klock status reads it too.
type QueueEntry struct {
	// ID is the waiter's identity.
	ID string `json:"id"`
	// Since is when it started waiting, by its own clock.
	Since metav1.MicroTime `json:"since"`
	// Beat changes whenever the waiter renews its place.
	Beat int64 `json:"beat"`
	// TTLSeconds is how long the place lasts without a renewal, by the
	// waiter's own setting (Config.QueueTTL).
	TTLSeconds int32 `json:"ttl"`
}

// ParseQueue reads the waiters of a queue Lease, in order.
func ParseQueue(l *coordinationv1.Lease) ([]QueueEntry, error) {
	raw, ok := l.Annotations[AnnotationQueue]
	if !ok || raw == "" {
		return nil, nil
	}
	var q []QueueEntry
	if err := json.Unmarshal([]byte(raw), &q); err != nil {
		return nil, fmt.Errorf("lease %s/%s: annotation %s is not a klock queue (%v): remove the annotation, or delete the Lease, to start the queue afresh", l.Namespace, l.Name, AnnotationQueue, err)
	}
	return q, nil
}

// MaxHoldersOf returns the holder count a Lease of a lock records: 1 when
// it records none, 0 when what it records is not a count.
func MaxHoldersOf(l *coordinationv1.Lease) int {
	v, ok := l.Annotations[AnnotationMaxHolders]
	if !ok {
		return 1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0
	}
	return n
}

// queue is what one contender knows of a lock's queue.
type queue struct {
	lock  *Lock // the lock's first slot, for its client and configuration
	name  string
	lease *coordinationv1.Lease // nil: missing
	// entries are the waiters as last read.
	entries []QueueEntry
	// seen is, per waiter, its Beat when last changed and the local time
	// from which it counts as unchanged.
	seen map[string]beatSeen
	// beat is this contender's own Beat, when it has a place.
	beat int64
}

type beatSeen struct {
	beat  int64
	since metav1.MicroTime // the place's, which a new place under the same identity changes
	at    time.Time
	ttl   time.Duration // the waiter's own, at most maxQueueTTL
}

// observe folds a fresh read of the queue Lease into q; age is how long it
// had stood unwritten by the API server's clock (see serverAge).
func (q *queue) observe(l *coordinationv1.Lease, now time.Time, age time.Duration) error {
	q.lease = l
	q.entries = nil
	if l != nil {
		entries, err := ParseQueue(l)
		if err != nil {
			return permanentError{err}
		}
		q.entries = entries
	}
	since := now.Add(-age)
	seen := make(map[string]beatSeen, len(q.entries))
	for _, e := range q.entries {
		s, ok := q.seen[e.ID]
		switch {
		case !ok || s.beat != e.Beat || !s.since.Equal(&e.Since):
			s = beatSeen{beat: e.Beat, since: e.Since, at: since}
		case since.Before(s.at):
			s.at = since
		}
		s.ttl = time.Duration(e.TTLSeconds) * time.Second
		if s.ttl <= 0 {
			s.ttl = q.lock.cfg.QueueTTL
		}
		s.ttl = min(s.ttl, maxQueueTTL) // a place written by hand cannot block a lock for a year
		seen[e.ID] = s
	}
	q.seen = seen
	return nil
}

// abandoned reports whether the waiter id has not renewed its place for
// its queue TTL (its own, which its entry records), as far as this
// contender has seen.
func (q *queue) abandoned(id string, now time.Time) bool {
	s, ok := q.seen[id]
	return ok && now.Sub(s.at) >= s.ttl
}

// line returns the waiters still in line at now, in order: the queue
// without abandoned places and without holders (a waiter that got the lock
// and has not yet left the queue), and the abandoned places before me's.
func (q *queue) line(me string, holders []string, now time.Time) (line, abandoned []string) {
	for _, e := range q.entries {
		switch {
		case e.ID != me && slices.Contains(holders, e.ID):
		case e.ID != me && q.abandoned(e.ID, now):
			if !slices.Contains(line, me) {
				abandoned = append(abandoned, e.ID)
			}
		default:
			line = append(line, e.ID)
		}
	}
	return line, abandoned
}

// nextAbandon is when the first waiter ahead of me in line will count as
// abandoned if it does not renew its place; zero if none is ahead.
func (q *queue) nextAbandon(line []string, me string) time.Time {
	var first time.Time
	for _, id := range line {
		if id == me {
			break
		}
		at := q.seen[id].at.Add(q.seen[id].ttl)
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	return first
}

// has reports whether id has a place in the queue as last read.
func (q *queue) has(id string) bool {
	return slices.ContainsFunc(q.entries, func(e QueueEntry) bool { return e.ID == id })
}

// join gives this contender a place at the end of the queue, or renews the
// place it has (a contender that was here before it restarted keeps its
// place).
func (q *queue) join(ctx context.Context) error {
	cfg := &q.lock.cfg
	return q.write(ctx, func(entries []QueueEntry, now time.Time) ([]QueueEntry, error) {
		q.beat++
		if i := slices.IndexFunc(entries, func(e QueueEntry) bool { return e.ID == cfg.Identity }); i >= 0 {
			entries[i].Beat = max(entries[i].Beat, q.beat-1) + 1
			q.beat = entries[i].Beat
			return entries, nil
		}
		if len(entries) >= maxQueue {
			return nil, permanentError{fmt.Errorf("the queue of lock %s/%s is full: %d waiters", cfg.Namespace, q.lock.lockName(), maxQueue)}
		}
		return append(entries, QueueEntry{ID: cfg.Identity, Since: microTime(now), Beat: q.beat, TTLSeconds: int32(cfg.QueueTTL / time.Second)}), nil
	})
}

// leave takes this contender's place out of the queue, and with it the
// abandoned places of others that were ahead of it: each only as it was
// seen abandoned (same beat, same place), so that a waiter that renewed its
// place meanwhile, or came back under the same identity, keeps it.
func (q *queue) leave(ctx context.Context, abandoned []string) error {
	cfg := &q.lock.cfg
	gone := map[string]beatSeen{}
	for _, id := range abandoned {
		gone[id] = q.seen[id]
	}
	return q.write(ctx, func(entries []QueueEntry, _ time.Time) ([]QueueEntry, error) {
		return slices.DeleteFunc(entries, func(e QueueEntry) bool {
			s, ok := gone[e.ID]
			return e.ID == cfg.Identity || ok && s.beat == e.Beat && s.since.Equal(&e.Since)
		}), nil
	})
}

// write changes the queue with edit, conditionally on the version last
// read, reading again after a conflict. It creates the queue Lease when
// there is none, and writes nothing when edit changes nothing.
func (q *queue) write(ctx context.Context, edit func([]QueueEntry, time.Time) ([]QueueEntry, error)) error {
	l := q.lock
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RenewDeadline)
	defer cancel()
	for attempt := 0; ; attempt++ {
		now := l.cfg.Clock.Now()
		entries, err := edit(slices.Clone(q.entries), now)
		if err != nil {
			return err
		}
		if q.lease != nil && slices.Equal(entries, q.entries) {
			return nil
		}

		if q.lease == nil && len(entries) == 0 {
			return nil
		}
		next := q.desired(entries, now)
		var written *coordinationv1.Lease
		if q.lease == nil {
			written, err = l.leases.Create(ctx, next, metav1.CreateOptions{})
		} else {
			written, err = l.leases.Update(ctx, next, metav1.UpdateOptions{})
		}
		if err == nil {
			return q.observe(written, now, 0)
		}
		if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) && !(apierrors.IsNotFound(err) && q.lease != nil) {
			return describeQueue(err, &l.cfg, q.name, "update")
		}
		// Another waiter wrote first: read and apply the edit again, after
		// a pause that grows, so that many waiters do not keep colliding.
		var date time.Time
		cur, err := l.leases.Get(withResponseDate(ctx, &date), q.name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			cur = nil
		case err != nil:
			return describeQueue(err, &l.cfg, q.name, "get")
		}
		if err := q.observe(cur, l.cfg.Clock.Now(), serverAge(cur, date, l.cfg.Clock.Now())); err != nil {
			return err
		}
		sleep(ctx, jitter(time.Duration(min(attempt+1, 8))*5*time.Millisecond))
		if ctx.Err() != nil {
			return fmt.Errorf("could not write the queue of lock %s/%s: %w", l.cfg.Namespace, l.lockName(), ctx.Err())
		}
	}
}

// desired is the queue Lease with entries. Its renewTime is set at every
// write, so that a contender that has just started can tell from the API
// server's own stamps how long the queue has stood unchanged.
func (q *queue) desired(entries []QueueEntry, now time.Time) *coordinationv1.Lease {
	cfg := &q.lock.cfg
	var next *coordinationv1.Lease
	if q.lease == nil {
		next = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Name: q.name, Namespace: cfg.Namespace,
			Labels: map[string]string{ManagedByLabel: ManagedByValue},
		}}
	} else {
		next = q.lease.DeepCopy()
	}
	if next.Annotations == nil {
		next.Annotations = map[string]string{}
	}
	raw, _ := json.Marshal(entries) // plain strings and numbers
	next.Annotations[AnnotationQueue] = string(raw)
	next.Annotations[AnnotationLock] = q.lock.lockName()
	setMaxHolders(next, cfg.MaxHolders)
	ts := microTime(now)
	next.Spec.RenewTime = &ts
	return next
}

// setMaxHolders records n on a Lease of a lock.
func setMaxHolders(l *coordinationv1.Lease, n int) {
	if n == 1 {
		delete(l.Annotations, AnnotationMaxHolders)
		return
	}
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Annotations[AnnotationMaxHolders] = strconv.Itoa(n)
}

// describeQueue is describe for the queue Lease.
func describeQueue(err error, c *Config, name, verb string) error {
	if apierrors.IsForbidden(err) {
		return permanentError{fmt.Errorf("not allowed to use lease %s/%s, where the waiters of lock %s queue first come, first served: grant get, create, update and watch on it too, or let waiters race (order any): %w", c.Namespace, name, c.Name, err)}
	}
	q := *c
	q.Name = name
	return describe(err, &q, verb)
}

// deleteIfEmpty deletes the queue Lease if nobody waits in it, for a lock
// that cleans up after itself (Config.DeleteOnRelease). The delete is
// conditional on the version read: a waiter that joined since keeps it.
// Best effort: the queue Lease is only a place to wait.
func (q *queue) deleteIfEmpty(ctx context.Context) {
	l := q.lock
	cur, err := l.leases.Get(ctx, q.name, metav1.GetOptions{})
	if err != nil {
		return
	}
	if entries, err := ParseQueue(cur); err != nil || len(entries) > 0 {
		return
	}
	uid, rv := cur.UID, cur.ResourceVersion
	err = l.leases.Delete(ctx, q.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	if err != nil {
		l.log.V(1).Info("Could not delete the empty queue", "err", err.Error())
	}
}

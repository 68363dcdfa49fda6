package klock

import (
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// record is the part of a Lease that says who holds it and for how long.
// A waiter restarts its expiry clock whenever the record changes, and only
// then: a write that touches nothing else (labels, say) is no sign of life.
type record struct {
	holder      string
	duration    time.Duration
	acquireTime int64 // Unix microseconds, as the API stores them
	renewTime   int64
	transitions int32
}

func recordOf(l *coordinationv1.Lease) record {
	var r record
	s := l.Spec
	if s.HolderIdentity != nil {
		r.holder = *s.HolderIdentity
	}
	if s.LeaseDurationSeconds != nil {
		r.duration = time.Duration(*s.LeaseDurationSeconds) * time.Second
	}
	if s.AcquireTime != nil {
		r.acquireTime = s.AcquireTime.UnixMicro()
	}
	if s.RenewTime != nil {
		r.renewTime = s.RenewTime.UnixMicro()
	}
	if s.LeaseTransitions != nil {
		r.transitions = *s.LeaseTransitions
	}
	return r
}

// observation is what this process knows of the Lease: the object last read
// (nil when it does not exist) and the local time at which its record was
// first seen. Judging expiry from that local time, never from renewTime,
// keeps the lock safe whatever the clock skew between machines.
type observation struct {
	lease  *coordinationv1.Lease
	record record
	seen   time.Time
}

// observe folds a fresh read of the Lease into o.
func (o *observation) observe(l *coordinationv1.Lease, now time.Time) {
	if l == nil {
		*o = observation{seen: now}
		return
	}
	r := recordOf(l)
	if o.lease == nil || r != o.record {
		o.record, o.seen = r, now
	}
	o.lease = l
}

// state says what identity may do with the observed Lease at now.
type state int

const (
	stateMissing state = iota // no Lease: create it
	stateFree                 // released or expired: take it
	stateOurs                 // held by this identity, unexpired: take it again (re-entrant)
	stateHeld                 // held by another identity until expiry()
)

func (o *observation) state(identity string, now time.Time) state {
	switch {
	case o.lease == nil:
		return stateMissing
	case o.record.holder == "":
		return stateFree
	case !now.Before(o.expiry()):
		// Expired, even if under our own identity: whoever held it is
		// gone, so this is a new acquisition, not a re-entrant one.
		return stateFree
	case o.record.holder == identity:
		return stateOurs
	default:
		return stateHeld
	}
}

// expiry is when others may take the observed Lease if nothing changes.
func (o *observation) expiry() time.Time {
	return o.seen.Add(o.record.duration)
}

// Package klock provides mutual exclusion across processes, pods and
// machines on top of coordination.k8s.io/v1 Lease objects.
//
// A Lock is one contender for one Lease. Acquire blocks until the Lease is
// free (event-driven: it watches that one Lease and retries the moment it is
// released or expires), TryAcquire answers at once. Both return a Hold,
// which renews the Lease in the background and reports through Lost when it
// could not renew before its renew deadline, which comes before the Lease can
// expire for anybody else. Release gives the Lease back at once so that the
// next waiter does not have to wait for it to expire.
//
// The Lease record is the one client-go's leader election writes
// (holderIdentity, acquireTime, renewTime, leaseDurationSeconds,
// leaseTransitions), so a klock holder and a client-go LeaseLock contender
// exclude each other. Expiry is judged the way client-go judges it: from the
// local time at which this process last saw the record change, plus the
// record's duration, never by comparing another machine's renewTime with the
// local clock. That time is moved back by how long the record had already
// stood when it was read, measured on the API server's clock alone (its
// managedFields stamp of the last write against the Date of its answer), so
// that a contender that has just started recognises a Lease abandoned long
// ago. Every write is conditional on the resourceVersion last read, and an
// acquisition or renewal whose answer was lost is recognised as this
// process's own when it is read back.
//
// Each acquisition yields a fencing token: the resourceVersion of the write
// that took the Lease. Resource versions of one resource are comparable
// integers (Kubernetes 1.35 and later), and they keep growing when a Lease is
// deleted and created again, so the token strictly increases with every
// acquisition of a lease name, which a counter kept inside the Lease could
// not promise.
package klock

package wrap

import (
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/klock-io/klock/internal/cli"
	"github.com/klock-io/klock/klock"
)

// flagAnnotations maps each annotation that sets a klock flag to the flag's
// long name, in the order the flags are written into the command. That
// order is part of what Wrapped recognises on pods that run already, so it
// never changes: a new annotation goes at the end.
var flagAnnotations = []struct{ annotation, flag string }{
	{AnnotationWait, "wait"},
	{AnnotationConflictExitCode, "conflict-exit-code"},
	{AnnotationLeaseDuration, "lease-duration"},
	{AnnotationRenewDeadline, "renew-deadline"},
	{AnnotationRetryPeriod, "retry-period"},
	{AnnotationSignal, "signal"},
	{AnnotationKillAfter, "kill-after"},
	{AnnotationCleanupLease, "cleanup-lease"},
	{AnnotationLabels, "labels"},
	{AnnotationMaxHolders, "max-holders"},
	{AnnotationOrder, "order"},
	{AnnotationQueueTTL, "queue-ttl"},
}

// Flags turns the annotations into klock's flags, --lease first, checking
// each value as klock itself will parse it, and then all of them together.
// The errors point at the annotations and say what they accept.
func Flags(annotations map[string]string) ([]string, field.ErrorList) {
	var errs field.ErrorList
	lease := annotations[AnnotationLease]
	if msgs := validation.IsDNS1123Subdomain(lease); len(msgs) > 0 {
		errs = append(errs, field.Invalid(annotationsPath.Key(AnnotationLease), lease, strings.Join(msgs, "; ")))
	}
	flags := []string{"--lease=" + lease}
	for _, fa := range flagAnnotations {
		value, ok := annotations[fa.annotation]
		if !ok {
			continue
		}
		if err := cli.CheckFlag(fa.flag, value); err != nil {
			errs = append(errs, field.Invalid(annotationsPath.Key(fa.annotation), value, accepted(fa.flag, err)))
			continue
		}
		if fa.flag == "cleanup-lease" {
			if on, _ := strconv.ParseBool(value); !on {
				continue
			}
		}
		flags = append(flags, "--"+fa.flag+"="+value)
	}
	if len(errs) == 0 {
		// The values are fine one by one; check what they make together.
		if err := cli.CheckArgs(flags); err != nil {
			errs = append(errs, field.Forbidden(annotationsPath, "the klock.io/ annotations do not fit together: "+err.Error()))
		}
	}
	return flags, errs
}

// accepted says what a flag accepts, for a denial message.
func accepted(flag string, err error) string {
	switch flag {
	case "conflict-exit-code":
		return "must be an exit code from 0 to 255"
	case "cleanup-lease":
		return `must be "true" or "false"`
	}
	// klock's own parsers say what they accept; pflag wraps them as
	// `invalid argument "v" for "--flag" flag: <reason>`.
	msg := err.Error()
	if _, reason, ok := strings.Cut(msg, " flag: "); ok {
		msg = reason
	}
	return msg
}

// LeaseNames returns every Lease the lock of a pod with these annotations
// touches, as klock.LeaseNames names them: klock.io/lease, the other
// holder slots of klock.io/max-holders (<lease>-1 ... <lease>-<N-1>), and
// the queue <lease>-queue unless klock.io/order is any. Permissions are
// granted and checked by these names. The two values are checked as klock
// parses them; the lease name itself is not (the caller judges each name).
func LeaseNames(annotations map[string]string) ([]string, error) {
	maxHolders, order := 1, klock.OrderFIFO
	if v, ok := annotations[AnnotationMaxHolders]; ok {
		if err := cli.CheckFlag("max-holders", v); err != nil {
			return nil, field.Invalid(annotationsPath.Key(AnnotationMaxHolders), v, accepted("max-holders", err))
		}
		maxHolders, _ = strconv.Atoi(v) // as klock parses it
	}
	if v, ok := annotations[AnnotationOrder]; ok {
		if err := cli.CheckFlag("order", v); err != nil {
			return nil, field.Invalid(annotationsPath.Key(AnnotationOrder), v, accepted("order", err))
		}
		order = klock.Order(v)
	}
	return klock.LeaseNames(annotations[AnnotationLease], maxHolders, order), nil
}

package wrap

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/klock-io/klock/internal/cli"
)

// Gating says which wrapped pods wait for their lock SchedulingGated: on
// no node, reserving nothing, and not counted by cluster autoscalers,
// rather than in a running container whose klock waits.
type Gating string

const (
	// GatingOff gates no pod, and denies a pod that asks for it, so that
	// klock.io/gate: "true" is never ignored without a word.
	GatingOff Gating = "off"
	// GatingOptIn gates the wrapped pods annotated klock.io/gate: "true".
	// It is what the zero value does.
	GatingOptIn Gating = "opt-in"
	// GatingDefault gates every wrapped pod but those annotated
	// klock.io/gate: "false".
	GatingDefault Gating = "default"
)

// DefaultStartTimeout is a gated pod's klock.io/start-timeout when it
// gives none.
const DefaultStartTimeout = 5 * time.Minute

// maxStartTimeout bounds klock.io/start-timeout: a lock reserved for a pod
// that never comes is held from everybody else that long.
const maxStartTimeout = 24 * time.Hour

// gatedLabel is LabelGated's value.
const gatedLabel = "true"

var schedulingGatesPath = field.NewPath("spec", "schedulingGates")

// Gated reports whether pod carries klock's scheduling gate.
func Gated(pod *corev1.Pod) bool { return gateIndex(pod) >= 0 }

// StartTimeout returns the klock.io/start-timeout of a pod with these
// annotations, DefaultStartTimeout when it has none. The value is read as
// klock reads its durations (30s, 1m30s, or seconds: 90), and must be above
// 0 and at most 24h.
func StartTimeout(annotations map[string]string) (time.Duration, error) {
	d, err := startTimeout(annotations)
	if err != nil {
		return 0, err
	}
	return d, nil
}

func startTimeout(annotations map[string]string) (time.Duration, *field.Error) {
	v, ok := annotations[AnnotationStartTimeout]
	if !ok {
		return DefaultStartTimeout, nil
	}
	d, err := cli.ParseDuration(v)
	if err != nil || d <= 0 || d > maxStartTimeout {
		return 0, field.Invalid(annotationsPath.Key(AnnotationStartTimeout), v, "must be a duration above 0 and at most 24h, such as 90s, 5m or 1h30m, or a number of seconds")
	}
	return d, nil
}

// CheckGate checks the values of klock.io/gate and klock.io/start-timeout,
// whatever the webhook's gating: for a workload, whose pods would all be
// denied for them.
func CheckGate(annotations map[string]string) field.ErrorList {
	var errs field.ErrorList
	if v, ok := annotations[AnnotationGate]; ok {
		if _, err := strconv.ParseBool(v); err != nil {
			errs = append(errs, field.Invalid(annotationsPath.Key(AnnotationGate), v, `must be "true" or "false"`))
		}
	}
	if _, err := startTimeout(annotations); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// gates reports whether opts gate pod, which asks for klock, by its
// annotations and its namespace; the errors say what to fix: a value of
// klock.io/gate or klock.io/start-timeout that is not one, klock.io/gate
// "true" where gating is off or in a namespace the gate controller does
// not act in, and klock's scheduling gate on a pod that is not to be
// gated, which nothing would ever remove.
func (opts Options) gates(pod *corev1.Pod) (bool, field.ErrorList) {
	errs := CheckGate(pod.Annotations)
	v, asked := pod.Annotations[AnnotationGate]
	want, err := strconv.ParseBool(v)
	if asked && err != nil {
		return false, errs
	}
	unask := "remove the annotation"
	if _, ok := pod.Annotations[AnnotationPolicy]; ok {
		unask = "remove the annotation, or spec.gate of the ClusterLockPolicy that sets it"
	}
	var on bool
	switch opts.Gating {
	case GatingOff:
		if asked && want {
			errs = append(errs, field.Forbidden(annotationsPath.Key(AnnotationGate),
				fmt.Sprintf("gating is off in this cluster (klock-webhook --gating=off, chart value gating): %s, and the pod waits for its lock in its running container", unask)))
		}
	case GatingDefault:
		on = !asked || want
	default: // GatingOptIn, and the zero value
		on = asked && want
	}
	outside := opts.Gating != GatingOff && !opts.gatesIn(pod.Namespace)
	if outside && asked && want {
		// Asked for in so many words (or by a policy): never ignored.
		errs = append(errs, field.Forbidden(annotationsPath.Key(AnnotationGate),
			fmt.Sprintf("the gate controller does not act in namespace %q (klock-webhook --gating-namespaces, chart value gatingNamespaces): %s, and the pod waits for its lock in its running container; or have the namespace added to gatingNamespaces", pod.Namespace, unask)))
	}
	if outside {
		// With gating default, a pod here is simply not gated: nothing
		// would let it through.
		on = false
	}
	if i := gateIndex(pod); !on && i >= 0 {
		why, fix := fmt.Sprintf("gating is %s and the pod has no %s annotation", opts.gating(), AnnotationGate), fmt.Sprintf(`remove the gate, or set %s: "true"`, AnnotationGate)
		if asked {
			why = fmt.Sprintf("gating is %s and %s is %q", opts.gating(), AnnotationGate, v)
		}
		if outside {
			why = fmt.Sprintf("the gate controller does not act in namespace %q", pod.Namespace)
		}
		if opts.Gating == GatingOff || outside {
			fix = "remove the gate"
		}
		errs = append(errs, field.Forbidden(schedulingGatesPath.Index(i).Child("name"),
			fmt.Sprintf("the scheduling gate %s is klock's, and klock does not gate this pod (%s), so nothing would remove it: %s", SchedulingGate, why, fix)))
	}
	return on, errs
}

// gateIndex is the index of klock's scheduling gate in pod's, or -1.
func gateIndex(pod *corev1.Pod) int {
	return slices.IndexFunc(pod.Spec.SchedulingGates, func(g corev1.PodSchedulingGate) bool { return g.Name == SchedulingGate })
}

// gatesIn reports whether the gate controller acts in namespace: any, when
// opts.GatingNamespaces is empty.
func (opts Options) gatesIn(namespace string) bool {
	return len(opts.GatingNamespaces) == 0 || slices.Contains(opts.GatingNamespaces, namespace)
}

// gating is opts.Gating, GatingOptIn for the zero value.
func (opts Options) gating() Gating {
	if opts.Gating == "" {
		return GatingOptIn
	}
	return opts.Gating
}

// gate makes pod wait for its lock SchedulingGated: klock's scheduling
// gate, once, after the pod's own, and LabelGated for the gate
// controller's cache.
func gate(pod *corev1.Pod) {
	if !Gated(pod) {
		pod.Spec.SchedulingGates = append(pod.Spec.SchedulingGates, corev1.PodSchedulingGate{Name: SchedulingGate})
	}
	if pod.Labels[LabelGated] != gatedLabel {
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[LabelGated] = gatedLabel
	}
}

// ForeignGate is the denial of a pod that does not ask for klock and
// carries klock's scheduling gate: only a wrapped pod is ever let through
// it, so the pod would wait for ever. Nil for any other pod.
func ForeignGate(pod *corev1.Pod) error {
	if err := foreignGate(pod); err != nil {
		return err
	}
	return nil
}

func foreignGate(pod *corev1.Pod) *field.Error {
	i := gateIndex(pod)
	if Wants(pod) || i < 0 {
		return nil
	}
	return field.Forbidden(schedulingGatesPath.Index(i).Child("name"),
		fmt.Sprintf("the scheduling gate %s is klock's, and only a pod klock wraps (annotated %s) is ever let through it: remove the gate", SchedulingGate, AnnotationLease))
}

// Package policy decides which ClusterLockPolicy applies to a pod, and
// keeps the webhook configuration following the policies. Candidates and
// ApplyPolicies are pure: they pick the policy by selectors, workload kind
// and priority, and write what it says on the pod as the klock.io/
// annotations that say the same, for wrap.Mutate to act on. ClusterPolicies
// reads the policies, namespaces and a pod's workload for the pod handler.
// Reconciler, on the leader, gives each valid policy its own entry in the
// MutatingWebhookConfiguration (PolicyWebhook) and keeps the policies'
// status. Workloads are judged by their pod templates (WorkloadTemplate),
// as the Lease access controller judges them too.
package policy

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/wrap"
)

var annotationsPath = field.NewPath("metadata", "annotations")

// Workload is a pod's controlling workload as policies see it: the top of
// its chain of controllers, so a CronJob rather than the Job it made.
type Workload struct {
	// Kind is CronJob, Job, Deployment, ReplicaSet, StatefulSet,
	// DaemonSet, another controller's kind, or Pod for a pod that has no
	// controller.
	Kind string
	Name string
}

// Candidates returns the valid policies whose namespace and pod selectors
// match: the checks that need nothing but the pod and its namespace's
// labels. A policy that ValidatePolicy rejects applies to nothing; the
// policy controller says why in its Ready condition.
func Candidates(policies []klockv1alpha1.ClusterLockPolicy, pod *corev1.Pod, nsLabels map[string]string) []*klockv1alpha1.ClusterLockPolicy {
	var out []*klockv1alpha1.ClusterLockPolicy
	for i := range policies {
		p := &policies[i]
		if matches(p.Spec.NamespaceSelector, nsLabels) && matches(p.Spec.Selector, pod.Labels) && ValidatePolicy(p) == nil {
			out = append(out, p)
		}
	}
	return out
}

// ValidatePolicy checks what the CRD's schema leaves to the webhook: the
// selectors, and the options as klock itself parses them, so that a policy
// the API server accepted never has every pod it selects denied.
func ValidatePolicy(p *klockv1alpha1.ClusterLockPolicy) error {
	spec := field.NewPath("spec")
	var errs field.ErrorList
	opts := metav1validation.LabelSelectorValidationOptions{}
	if s := p.Spec.NamespaceSelector; s != nil {
		errs = append(errs, metav1validation.ValidateLabelSelector(s, opts, spec.Child("namespaceSelector"))...)
	}
	if s := p.Spec.Selector; s != nil {
		errs = append(errs, metav1validation.ValidateLabelSelector(s, opts, spec.Child("selector"))...)
	}
	// A pod with a lease of its own, so that only the options are checked:
	// the template is checked by the schema, and rendered per pod.
	check := p.DeepCopy()
	check.Spec.AllowSkip = true
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{wrap.AnnotationLease: "check"}}}
	values, _ := policyAnnotations(check, pod, Workload{})
	values[wrap.AnnotationLease] = "check"
	if _, ferrs := wrap.Flags(values); len(ferrs) > 0 {
		for _, e := range ferrs {
			errs = append(errs, field.Invalid(spec, e.BadValue, "klock does not accept the options: "+e.Detail))
		}
	}
	// The schema bounds it too; this is the check behind it, as the
	// webhook reads it from the pod.
	if _, err := wrap.StartTimeout(values); err != nil {
		errs = append(errs, field.Invalid(spec.Child("startTimeout"), values[wrap.AnnotationStartTimeout], "must be above 0 and at most 24h"))
	}
	return errs.ToAggregate()
}

func matches(s *metav1.LabelSelector, set map[string]string) bool {
	if s == nil {
		return true // unlike LabelSelectorAsSelector(nil), which is Nothing
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	return err == nil && sel.Matches(labels.Set(set))
}

// ApplyPolicies puts the policy that applies to pod, among candidates, on
// the pod as annotations: each option the pod does not set itself, the
// rendered lease name, and wrap.AnnotationPolicy. wrap.Mutate then wraps
// the pod as if its author had written them. Of the candidates, those whose
// workload kinds include w's apply; the highest priority wins, and a tie at
// the top is an error naming the tied policies. A pod annotated klock.io/skip:
// "true" is left alone when the policy allows it, and denied when not.
// The policy returned is the one applied, if any.
func ApplyPolicies(pod *corev1.Pod, candidates []*klockv1alpha1.ClusterLockPolicy, w Workload) (applied *klockv1alpha1.ClusterLockPolicy, warnings []string, err error) {
	var selecting []*klockv1alpha1.ClusterLockPolicy
	for _, p := range candidates {
		if len(p.Spec.WorkloadKinds) == 0 || slices.Contains(p.Spec.WorkloadKinds, klockv1alpha1.WorkloadKind(w.Kind)) {
			selecting = append(selecting, p)
		}
	}
	if len(selecting) == 0 {
		return nil, nil, nil
	}
	slices.SortFunc(selecting, func(a, b *klockv1alpha1.ClusterLockPolicy) int {
		return cmp.Or(cmp.Compare(b.Spec.Priority, a.Spec.Priority), strings.Compare(a.Name, b.Name))
	})
	p := selecting[0]
	if len(selecting) > 1 && selecting[1].Spec.Priority == p.Spec.Priority {
		var tied []string
		for _, q := range selecting {
			if q.Spec.Priority == p.Spec.Priority {
				tied = append(tied, q.Name)
			}
		}
		return nil, nil, fmt.Errorf("ClusterLockPolicies %s all select this pod with priority %d: give one a higher spec.priority, or narrow their selectors",
			strings.Join(tied, ", "), p.Spec.Priority)
	}
	for _, q := range selecting[1:] {
		warnings = append(warnings, fmt.Sprintf("ClusterLockPolicy %s (priority %d) also selects this pod, and gives way to %s (priority %d)", q.Name, q.Spec.Priority, p.Name, p.Spec.Priority))
	}

	if skip, ok := pod.Annotations[wrap.AnnotationSkip]; ok {
		on, perr := strconv.ParseBool(skip)
		switch {
		case perr != nil:
			return nil, nil, field.Invalid(annotationsPath.Key(wrap.AnnotationSkip), skip, `must be "true" or "false"`)
		case on && !p.Spec.AllowSkip:
			return nil, nil, field.Forbidden(annotationsPath.Key(wrap.AnnotationSkip), fmt.Sprintf("ClusterLockPolicy %s selects this pod and does not allow it to skip the lock: remove the annotation, or set allowSkip: true on the policy", p.Name))
		case on:
			return nil, warnings, nil
		}
	}

	values, err := policyAnnotations(p, pod, w)
	if err != nil {
		return nil, nil, err
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	if !p.Spec.AllowSkip {
		if err := enforce(p, pod, values); err != nil {
			return nil, nil, err
		}
	}
	for k, v := range values {
		if _, own := pod.Annotations[k]; !own {
			pod.Annotations[k] = v
		}
	}
	pod.Annotations[wrap.AnnotationPolicy] = p.Name
	return p, warnings, nil
}

// enforce makes the lease, the container and the number of holders of a
// policy that pods may not skip the policy's, not the pod's: a pod that
// could name its own lease would run beside the others under a lease of
// its own, one that could name its container would have klock wrap an
// idle sidecar, and one that could raise the count would run beside as
// many others as it liked. A policy without a container wraps the first,
// and one without maxHolders is a mutex. A pod that says otherwise is
// denied; saying the same is fine.
func enforce(p *klockv1alpha1.ClusterLockPolicy, pod *corev1.Pod, values map[string]string) error {
	if _, ok := values[wrap.AnnotationContainer]; !ok && len(pod.Spec.Containers) > 0 {
		values[wrap.AnnotationContainer] = pod.Spec.Containers[0].Name
	}
	for _, r := range []struct{ key, value string }{
		{wrap.AnnotationLease, values[wrap.AnnotationLease]},
		{wrap.AnnotationContainer, values[wrap.AnnotationContainer]},
		// Compared, not written on the pod: the pods of a mutex keep the
		// command they had before there were counting locks.
		{wrap.AnnotationMaxHolders, cmp.Or(values[wrap.AnnotationMaxHolders], "1")},
	} {
		own, ok := pod.Annotations[r.key]
		if ok && own != r.value {
			return field.Forbidden(annotationsPath.Key(r.key), fmt.Sprintf("ClusterLockPolicy %s selects this pod, does not allow it to skip the lock, and sets %s to %q: remove the annotation, or set it to that value", p.Name, r.key, r.value))
		}
	}
	return nil
}

// policyAnnotations is what policy p says, as the annotations that say the
// same on a pod.
func policyAnnotations(p *klockv1alpha1.ClusterLockPolicy, pod *corev1.Pod, w Workload) (map[string]string, error) {
	s := p.Spec
	out := map[string]string{}
	// A pod's own lease is rendered too where the policy enforces its own.
	if _, own := pod.Annotations[wrap.AnnotationLease]; !own || !s.AllowSkip {
		lease, err := RenderLease(cmp.Or(s.Lease, klockv1alpha1.DefaultLease), pod.Namespace, w, pod.Labels)
		if err != nil {
			return nil, fmt.Errorf("ClusterLockPolicy %s selects this pod, but its lease %q cannot be named for it: %w", p.Name, s.Lease, err)
		}
		out[wrap.AnnotationLease] = lease
	}
	set := func(key, value string) {
		if value != "" {
			out[key] = value
		}
	}
	set(wrap.AnnotationContainer, s.Container)
	set(wrap.AnnotationWait, s.Wait)
	if s.ConflictExitCode != nil {
		out[wrap.AnnotationConflictExitCode] = strconv.Itoa(int(*s.ConflictExitCode))
	}
	set(wrap.AnnotationLeaseDuration, s.LeaseDuration)
	set(wrap.AnnotationRenewDeadline, s.RenewDeadline)
	set(wrap.AnnotationRetryPeriod, s.RetryPeriod)
	set(wrap.AnnotationSignal, s.Signal)
	set(wrap.AnnotationKillAfter, s.KillAfter)
	if s.CleanupLease {
		out[wrap.AnnotationCleanupLease] = "true"
	}
	var pairs []string
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		pairs = append(pairs, k+"="+s.Labels[k])
	}
	set(wrap.AnnotationLabels, strings.Join(pairs, ","))
	if s.MaxHolders != 0 {
		out[wrap.AnnotationMaxHolders] = strconv.Itoa(int(s.MaxHolders))
	}
	set(wrap.AnnotationOrder, s.Order)
	if s.Gate != nil {
		out[wrap.AnnotationGate] = strconv.FormatBool(*s.Gate)
	}
	if s.StartTimeout != nil {
		out[wrap.AnnotationStartTimeout] = s.StartTimeout.Duration.String()
	}
	return out, nil
}

// RenderLease fills a policy's lease template: {namespace}, {kind} (lower
// case), {name} and {label:<key>} (lower case, '_' as '-', since a Lease
// name allows neither). The result must be a valid Lease name.
func RenderLease(template, namespace string, w Workload, podLabels map[string]string) (string, error) {
	var b strings.Builder
	rest := template
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			b.WriteString(rest)
			break
		}
		b.WriteString(rest[:open])
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return "", fmt.Errorf("unclosed { in %q", template)
		}
		key := rest[open+1 : open+end]
		rest = rest[open+end+1:]
		switch {
		case key == "namespace":
			b.WriteString(namespace)
		case key == "kind":
			b.WriteString(strings.ToLower(w.Kind))
		case key == "name":
			if w.Name == "" {
				return "", fmt.Errorf("{name} is empty: the pod has no controller and no name yet (only generateName); give it a name, or a lease without {name}")
			}
			b.WriteString(w.Name)
		case strings.HasPrefix(key, "label:"):
			v, ok := podLabels[strings.TrimPrefix(key, "label:")]
			if !ok {
				return "", fmt.Errorf("the pod has no label %s: add the label, or select only pods that have it (selector matchExpressions operator Exists)", strings.TrimPrefix(key, "label:"))
			}
			b.WriteString(strings.ReplaceAll(strings.ToLower(v), "_", "-"))
		default:
			return "", fmt.Errorf("unknown placeholder {%s}: use {namespace}, {kind}, {name} or {label:<key>}", key)
		}
	}
	name := b.String()
	if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
		return "", fmt.Errorf("it renders as %q, which is not a Lease name: %s", name, strings.Join(msgs, "; "))
	}
	return name, nil
}

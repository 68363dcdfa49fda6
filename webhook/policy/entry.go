package policy

import (
	"context"
	"fmt"
	"slices"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/wrap"
)

const (
	// PodsWebhook is the webhook configuration's entry for annotated pods;
	// each policy's entry is made from it.
	PodsWebhook = "pods.klock.io"
	// policyWebhookSuffix ends the names of policy entries:
	// <policy>.policies.klock.io.
	policyWebhookSuffix = ".policies.klock.io"
	// EntryPathPrefix starts what a policy's entry adds to the pods
	// entry's path (see EntryPath).
	EntryPathPrefix = "/policies/"
)

// EntryPath is what the entry for generation generation of policy name
// adds to the pods entry's path: /policies/<name>/<generation>. The pod
// handler reads the policy and generation back from it, and refuses the
// pod while its replica has not seen them.
func EntryPath(name string, generation int64) string {
	return fmt.Sprintf("%s%s/%d", EntryPathPrefix, name, generation)
}

// PolicyWebhook is the webhook configuration's entry for policy p: a copy
// of the pods entry (where to call, the CA, timeouts, failure policy)
// that sends the pods p could select, annotated or not. The namespace and
// object selectors and the workload kinds are checked by the API server,
// so an outage of the webhook blocks only those pods; the webhook decides
// the rest (priority, opt-out, templates).
func PolicyWebhook(pods *admissionregistrationv1.MutatingWebhook, p *klockv1alpha1.ClusterLockPolicy) admissionregistrationv1.MutatingWebhook {
	w := *pods.DeepCopy()
	w.Name = p.Name + policyWebhookSuffix
	// The path names the policy and its generation: a replica whose cache
	// has not seen them yet fails the call (and the API server refuses the
	// pod) rather than admit it unwrapped.
	suffix := EntryPath(p.Name, p.Generation)
	if svc := w.ClientConfig.Service; svc != nil {
		svc.Path = ptr.To(strings.TrimSuffix(ptr.Deref(svc.Path, ""), "/") + suffix)
	}
	if u := w.ClientConfig.URL; u != nil {
		w.ClientConfig.URL = ptr.To(strings.TrimSuffix(*u, "/") + suffix)
	}
	w.NamespaceSelector = andSelectors(pods.NamespaceSelector, p.Spec.NamespaceSelector)
	w.ObjectSelector = andSelectors(pods.ObjectSelector, p.Spec.Selector)
	// No condition skips pods that look wrapped: only the webhook can tell
	// klock's wrapping from a pod made to look like it (wrap.Wrapped).
	w.MatchConditions = nil
	if p.Spec.AllowSkip {
		w.MatchConditions = append(w.MatchConditions, admissionregistrationv1.MatchCondition{
			Name:       "not-skipped",
			Expression: "!has(object.metadata.annotations) || !('" + wrap.AnnotationSkip + "' in object.metadata.annotations) || object.metadata.annotations['" + wrap.AnnotationSkip + "'] != 'true'",
		})
	}
	if owners := ownerKinds(p.Spec.WorkloadKinds); len(owners) > 0 {
		w.MatchConditions = append(w.MatchConditions, admissionregistrationv1.MatchCondition{
			Name: "workload-kinds",
			Expression: "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller && r.kind in ['" +
				strings.Join(owners, "', '") + "'])",
		})
	}
	return w
}

// ownerKinds are the kinds of the pods' own controllers for the workload
// kinds: a CronJob's pods, like a Job's, are owned by a Job.
func ownerKinds(kinds []klockv1alpha1.WorkloadKind) []string {
	var out []string
	for _, k := range kinds {
		owner := string(k)
		switch k {
		case klockv1alpha1.CronJob:
			owner = "Job"
		case klockv1alpha1.Deployment:
			owner = "ReplicaSet"
		}
		if !slices.Contains(out, owner) {
			out = append(out, owner)
		}
	}
	slices.Sort(out)
	return out
}

// andSelectors is a selector that matches what both a and b match.
func andSelectors(a, b *metav1.LabelSelector) *metav1.LabelSelector {
	out := &metav1.LabelSelector{}
	for _, s := range []*metav1.LabelSelector{a, b} {
		if s == nil {
			continue
		}
		for k, v := range s.MatchLabels {
			// A key in both with different values can match nothing; as
			// an expression it says so instead of one value replacing
			// the other.
			out.MatchExpressions = append(out.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpIn, Values: []string{v}})
		}
		out.MatchExpressions = append(out.MatchExpressions, s.MatchExpressions...)
	}
	slices.SortStableFunc(out.MatchExpressions, func(x, y metav1.LabelSelectorRequirement) int { return strings.Compare(x.Key, y.Key) })
	return out
}

// ServedBy returns whether the webhook configuration's pods entry sends
// pods of a namespace and labels to the webhook: its namespaceSelector
// (such as the excluded namespaces) and objectSelector.
func ServedBy(ctx context.Context, c client.Reader, configuration string) (func(nsLabels, podLabels map[string]string) bool, error) {
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, types.NamespacedName{Name: configuration}, &mwc); err != nil {
		return nil, fmt.Errorf("reading MutatingWebhookConfiguration %s: %w", configuration, err)
	}
	i := slices.IndexFunc(mwc.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool { return w.Name == PodsWebhook })
	if i < 0 {
		return nil, fmt.Errorf("MutatingWebhookConfiguration %s has no entry %s", configuration, PodsWebhook)
	}
	pods := mwc.Webhooks[i]
	return func(nsLabels, podLabels map[string]string) bool {
		return matches(pods.NamespaceSelector, nsLabels) && matches(pods.ObjectSelector, podLabels)
	}, nil
}

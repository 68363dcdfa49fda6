package policy

import (
	"context"
	"fmt"
	"slices"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

// Reconciler keeps the webhook configuration's policy entries in step with
// the ClusterLockPolicies, and the policies' status: Ready once their entry
// is in place, and how many workloads they select.
type Reconciler struct {
	Client client.Client
	// WebhookConfiguration is the MutatingWebhookConfiguration's name.
	WebhookConfiguration string
}

// SetupWithManager runs the reconciler on the leader. Every event asks for
// the same single pass over all policies: entries and counts depend on all
// of them together.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	all := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: "policies"}}}
	})
	// Only what changes the entries or the counts: not the status the
	// reconciler writes itself, nor a workload's or namespace's status.
	specs := builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}))
	b := ctrl.NewControllerManagedBy(mgr).Named("clusterlockpolicy").
		Watches(&klockv1alpha1.ClusterLockPolicy{}, all, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&admissionregistrationv1.MutatingWebhookConfiguration{}, all).
		Watches(&corev1.Namespace{}, all, builder.OnlyMetadata, builder.WithPredicates(predicate.LabelChangedPredicate{}))
	for _, obj := range WorkloadObjects() {
		b = b.Watches(obj, all, specs)
	}
	return b.Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	var policies klockv1alpha1.ClusterLockPolicyList
	if err := r.Client.List(ctx, &policies); err != nil {
		return reconcile.Result{}, err
	}
	slices.SortFunc(policies.Items, func(a, b klockv1alpha1.ClusterLockPolicy) int { return strings.Compare(a.Name, b.Name) })

	invalid := map[string]error{}
	var valid []klockv1alpha1.ClusterLockPolicy
	for _, p := range policies.Items {
		if err := ValidatePolicy(&p); err != nil {
			invalid[p.Name] = err
		} else {
			valid = append(valid, p)
		}
	}
	syncErr := r.syncWebhooks(ctx, valid)
	if apierrors.IsConflict(syncErr) {
		return reconcile.Result{}, syncErr // someone else wrote it first: read it again
	}
	counts, err := r.countWorkloads(ctx, valid)
	if err != nil {
		return reconcile.Result{}, err
	}
	for i := range policies.Items {
		p := &policies.Items[i]
		status := p.Status.DeepCopy()
		status.ObservedGeneration = p.Generation
		status.Workloads = counts[p.Name]
		cond := metav1.Condition{Type: klockv1alpha1.ConditionReady, Status: metav1.ConditionTrue, ObservedGeneration: p.Generation,
			Reason: "WebhookConfigured", Message: "the pods this policy selects are sent to the webhook"}
		switch {
		case invalid[p.Name] != nil:
			cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "Invalid", "the policy applies to nothing until this is fixed: "+invalid[p.Name].Error()
		case syncErr != nil:
			cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "WebhookNotConfigured", syncErr.Error()
		}
		meta.SetStatusCondition(&status.Conditions, cond)
		if equality.Semantic.DeepEqual(status, &p.Status) {
			continue
		}
		p.Status = *status
		if err := r.Client.Status().Update(ctx, p); err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
	}
	return reconcile.Result{}, syncErr // retried with backoff
}

// syncWebhooks writes one entry per policy into the webhook configuration,
// after the entries that are not the policies'.
func (r *Reconciler) syncWebhooks(ctx context.Context, policies []klockv1alpha1.ClusterLockPolicy) error {
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := r.Client.Get(ctx, types.NamespacedName{Name: r.WebhookConfiguration}, &mwc); err != nil {
		return fmt.Errorf("reading MutatingWebhookConfiguration %s: %w", r.WebhookConfiguration, err)
	}
	i := slices.IndexFunc(mwc.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool { return w.Name == PodsWebhook })
	if i < 0 {
		return fmt.Errorf("MutatingWebhookConfiguration %s has no entry %s to make policy entries from: reinstall it from the chart or deploy/", r.WebhookConfiguration, PodsWebhook)
	}
	pods := mwc.Webhooks[i]
	want := slices.DeleteFunc(slices.Clone(mwc.Webhooks), func(w admissionregistrationv1.MutatingWebhook) bool {
		return strings.HasSuffix(w.Name, policyWebhookSuffix)
	})
	for i := range policies {
		if policies[i].DeletionTimestamp.IsZero() {
			want = append(want, PolicyWebhook(&pods, &policies[i]))
		}
	}
	if equality.Semantic.DeepEqual(want, mwc.Webhooks) {
		return nil
	}
	mwc.Webhooks = want
	return r.Client.Update(ctx, &mwc)
}

// countWorkloads counts, for each policy, the workloads whose pod
// templates it selects.
func (r *Reconciler) countWorkloads(ctx context.Context, policies []klockv1alpha1.ClusterLockPolicy) (map[string]int32, error) {
	counts := map[string]int32{}
	if len(policies) == 0 {
		return counts, nil
	}
	serves, err := ServedBy(ctx, r.Client, r.WebhookConfiguration)
	if err != nil { // the Ready condition says why; count all meanwhile
		serves = func(_, _ map[string]string) bool { return true }
	}
	err = eachWorkload(ctx, r.Client, func(w WorkloadTemplate, nsLabels map[string]string) {
		pod := w.Pod()
		if !serves(nsLabels, pod.Labels) {
			return
		}
		for _, p := range Candidates(policies, pod, nsLabels) {
			if len(p.Spec.WorkloadKinds) == 0 || slices.Contains(p.Spec.WorkloadKinds, klockv1alpha1.WorkloadKind(w.Kind)) {
				counts[p.Name]++
			}
		}
	})
	return counts, err
}

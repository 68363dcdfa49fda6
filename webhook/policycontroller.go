package webhook

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

const (
	// PodsWebhook is the webhook configuration's entry for annotated pods;
	// each policy's entry is made from it.
	PodsWebhook = "pods.klock.io"
	// policyWebhookSuffix ends the names of policy entries:
	// <policy>.policies.klock.io.
	policyWebhookSuffix = ".policies.klock.io"
)

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
	suffix := PolicyPath(p.Name, p.Generation)[len(PodsPath):]
	if svc := w.ClientConfig.Service; svc != nil {
		svc.Path = ptr(strings.TrimSuffix(ptrOr(svc.Path, ""), "/") + suffix)
	}
	if u := w.ClientConfig.URL; u != nil {
		w.ClientConfig.URL = ptr(strings.TrimSuffix(*u, "/") + suffix)
	}
	w.NamespaceSelector = andSelectors(pods.NamespaceSelector, p.Spec.NamespaceSelector)
	w.ObjectSelector = andSelectors(pods.ObjectSelector, p.Spec.Selector)
	// The same test as Wrapped: an annotation alone must not let a pod
	// pass unwrapped.
	w.MatchConditions = []admissionregistrationv1.MatchCondition{{
		Name: "not-wrapped",
		Expression: "!(has(object.spec.initContainers) && object.spec.initContainers.exists(c, c.name == '" + InitContainerName + "') && " +
			"object.spec.containers.exists(c, has(c.command) && size(c.command) > 0 && c.command[0] == '" + BinaryPath + "'))",
	}}
	if p.Spec.AllowSkip {
		w.MatchConditions = append(w.MatchConditions, admissionregistrationv1.MatchCondition{
			Name:       "not-skipped",
			Expression: "!has(object.metadata.annotations) || !('" + AnnotationSkip + "' in object.metadata.annotations) || object.metadata.annotations['" + AnnotationSkip + "'] != 'true'",
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

// PolicyReconciler keeps the webhook configuration's policy entries in
// step with the ClusterLockPolicies, and the policies' status: Ready once
// their entry is in place, and how many workloads they select.
type PolicyReconciler struct {
	Client client.Client
	// WebhookConfiguration is the MutatingWebhookConfiguration's name.
	WebhookConfiguration string
}

// SetupWithManager runs the reconciler on the leader. Every event asks for
// the same single pass over all policies: entries and counts depend on all
// of them together.
func (r *PolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
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
	for _, obj := range workloadObjects() {
		b = b.Watches(obj, all, specs)
	}
	return b.Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *PolicyReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
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
func (r *PolicyReconciler) syncWebhooks(ctx context.Context, policies []klockv1alpha1.ClusterLockPolicy) error {
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
func (r *PolicyReconciler) countWorkloads(ctx context.Context, policies []klockv1alpha1.ClusterLockPolicy) (map[string]int32, error) {
	counts := map[string]int32{}
	if len(policies) == 0 {
		return counts, nil
	}
	serves, err := servedBy(ctx, r.Client, r.WebhookConfiguration)
	if err != nil { // the Ready condition says why; count all meanwhile
		serves = func(_, _ map[string]string) bool { return true }
	}
	err = eachWorkload(ctx, r.Client, func(w workloadTemplate, nsLabels map[string]string) {
		pod := w.pod()
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

// workloadTemplate is a workload as the policies see it: what it is, and
// the pod template its pods are made from.
type workloadTemplate struct {
	Workload
	Object   client.Object
	Template *corev1.PodTemplateSpec
}

// pod is a pod as the workload would make it, for selecting and wrapping
// decisions made ahead of its pods. Its annotations are a copy: the
// template may be the cache's.
func (w workloadTemplate) pod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   w.Object.GetNamespace(),
			Labels:      w.Template.Labels,
			Annotations: maps.Clone(w.Template.Annotations),
		},
		Spec: corev1.PodSpec{ServiceAccountName: w.Template.Spec.ServiceAccountName},
	}
}

// workloadObjects are the kinds of workload policies select.
func workloadObjects() []client.Object {
	return []client.Object{&batchv1.CronJob{}, &batchv1.Job{}, &appsv1.Deployment{}, &appsv1.StatefulSet{}, &appsv1.DaemonSet{}}
}

// templateOf returns obj as a workloadTemplate; ok is false for a Job that
// a CronJob controls, since the CronJob is the workload.
func templateOf(obj client.Object) (w workloadTemplate, ok bool) {
	w.Object, w.Name = obj, obj.GetName()
	switch o := obj.(type) {
	case *batchv1.CronJob:
		w.Kind, w.Template = string(klockv1alpha1.CronJob), &o.Spec.JobTemplate.Spec.Template
	case *batchv1.Job:
		if ref := metav1.GetControllerOf(o); ref != nil && ref.Kind == "CronJob" {
			return w, false
		}
		w.Kind, w.Template = string(klockv1alpha1.Job), &o.Spec.Template
	case *appsv1.Deployment:
		w.Kind, w.Template = string(klockv1alpha1.Deployment), &o.Spec.Template
	case *appsv1.StatefulSet:
		w.Kind, w.Template = string(klockv1alpha1.StatefulSet), &o.Spec.Template
	case *appsv1.DaemonSet:
		w.Kind, w.Template = string(klockv1alpha1.DaemonSet), &o.Spec.Template
	default:
		return w, false
	}
	return w, true
}

// eachWorkload calls fn for every workload in the cache, with its
// namespace's labels.
func eachWorkload(ctx context.Context, c client.Client, fn func(workloadTemplate, map[string]string)) error {
	var namespaces metav1.PartialObjectMetadataList
	namespaces.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := c.List(ctx, &namespaces); err != nil {
		return err
	}
	nsLabels := map[string]map[string]string{}
	for _, ns := range namespaces.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	for _, obj := range workloadObjects() {
		list, err := listFor(c, obj)
		if err != nil {
			return err
		}
		if err := c.List(ctx, list); err != nil {
			return err
		}
		if err := metaEach(list, func(o client.Object) {
			if w, ok := templateOf(o); ok {
				fn(w, nsLabels[w.Object.GetNamespace()])
			}
		}); err != nil {
			return err
		}
	}
	return nil
}

// metaEach calls fn for each item of list.
func metaEach(list client.ObjectList, fn func(client.Object)) error {
	return meta.EachListItem(list, func(o runtime.Object) error {
		fn(o.(client.Object))
		return nil
	})
}

// trimWorkload keeps of a cached workload only what policies and Lease
// access read: metadata, and its pod template's metadata and service
// account. A cluster's Jobs and Deployments then cost little memory.
func trimWorkload(obj any) (any, error) {
	trim := func(t *corev1.PodTemplateSpec) {
		*t = corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: t.Labels, Annotations: t.Annotations},
			Spec:       corev1.PodSpec{ServiceAccountName: t.Spec.ServiceAccountName},
		}
	}
	switch o := obj.(type) {
	case *batchv1.CronJob:
		tmpl := o.Spec.JobTemplate.Spec.Template
		trim(&tmpl)
		o.Spec = batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl}}}
		o.Status = batchv1.CronJobStatus{}
	case *batchv1.Job:
		trim(&o.Spec.Template)
		o.Spec = batchv1.JobSpec{Template: o.Spec.Template}
		o.Status = batchv1.JobStatus{}
	case *appsv1.Deployment:
		trim(&o.Spec.Template)
		o.Spec = appsv1.DeploymentSpec{Template: o.Spec.Template}
		o.Status = appsv1.DeploymentStatus{}
	case *appsv1.StatefulSet:
		trim(&o.Spec.Template)
		o.Spec = appsv1.StatefulSetSpec{Template: o.Spec.Template}
		o.Status = appsv1.StatefulSetStatus{}
	case *appsv1.DaemonSet:
		trim(&o.Spec.Template)
		o.Spec = appsv1.DaemonSetSpec{Template: o.Spec.Template}
		o.Status = appsv1.DaemonSetStatus{}
	}
	if o, ok := obj.(metav1.Object); ok {
		o.SetManagedFields(nil)
	}
	return obj, nil
}

// PolicyPath is where the webhook configuration's entry for generation
// generation of policy name sends pods.
func PolicyPath(name string, generation int64) string {
	return fmt.Sprintf("%s%s/%d", PolicyPathPrefix, name, generation)
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// listFor returns an empty list of obj's kind, from c's scheme.
func listFor(c client.Client, obj client.Object) (client.ObjectList, error) {
	gvk, err := c.GroupVersionKindFor(obj)
	if err != nil {
		return nil, err
	}
	list, err := c.Scheme().New(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
	if err != nil {
		return nil, err
	}
	return list.(client.ObjectList), nil
}

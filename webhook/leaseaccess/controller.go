package leaseaccess

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/policy"
	"github.com/klock-io/klock/webhook/wrap"
)

// Modes: which wrapped workloads get a Role for their Lease
// (--lease-access).
const (
	ModeOff    = "off"
	ModePolicy = "policy" // those whose policy sets grantLeaseAccess
	ModeAll    = "all"    // every wrapped workload
)

// Reconciler keeps, for each wrapped workload that should have it, a Role
// and a RoleBinding that let the workload's service account use its lock's
// Leases and no others: get, watch and update (and delete with
// cleanup-lease) on those names alone (wrap.LeaseNames: the lease, its
// other holder slots and its queue), and create, which RBAC cannot limit
// by name. They are owned by the workload, so they go when it goes, and
// are deleted when it stops being wrapped or granted.
type Reconciler struct {
	Client client.Client
	// API reads pods' metadata when a Role is narrowed or removed.
	API  client.Reader
	Mode string
	// WebhookConfiguration is the MutatingWebhookConfiguration: only the
	// workloads in the namespaces its pods entry serves are granted.
	WebhookConfiguration string
	// Wrap is how the webhook wraps pods: a Lease name stays granted for
	// a running pod only if the pod is wrapped so (wrap.Wrapped), not
	// because its annotations say so.
	Wrap wrap.Options
}

// systemNamespaces are never granted Leases: theirs belong to the control
// plane (leader election, node heartbeats), whatever a workload there
// names.
var systemNamespaces = []string{"kube-system", "kube-node-lease", "kube-public"}

// SetupWithManager runs one controller per workload kind, on the leader.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	for _, obj := range policy.WorkloadObjects() {
		gvk, err := mgr.GetClient().GroupVersionKindFor(obj)
		if err != nil {
			return err
		}
		byPolicy := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
			return r.requestsFor(ctx, obj, "")
		})
		byNamespace := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, ns client.Object) []reconcile.Request {
			return r.requestsFor(ctx, obj, ns.GetName())
		})
		err = ctrl.NewControllerManagedBy(mgr).
			Named("lease-access-"+strings.ToLower(gvk.Kind)).
			For(obj, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}))).
			Owns(&rbacv1.Role{}).
			Owns(&rbacv1.RoleBinding{}).
			Watches(&klockv1alpha1.ClusterLockPolicy{}, byPolicy, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
			Watches(&corev1.Namespace{}, byNamespace, builder.OnlyMetadata, builder.WithPredicates(predicate.LabelChangedPredicate{})).
			Complete(reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
				return r.reconcile(ctx, obj.DeepCopyObject().(client.Object), req.NamespacedName)
			}))
		if err != nil {
			return err
		}
	}
	return nil
}

// requestsFor lists the workloads of obj's kind, in namespace ns or all.
func (r *Reconciler) requestsFor(ctx context.Context, obj client.Object, ns string) []reconcile.Request {
	items, err := policy.ListWorkloads(ctx, r.Client, obj, client.InNamespace(ns))
	if err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, o := range items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(o)})
	}
	return reqs
}

func (r *Reconciler) reconcile(ctx context.Context, obj client.Object, key types.NamespacedName) (reconcile.Result, error) {
	if err := r.Client.Get(ctx, key, obj); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err) // its Role goes by garbage collection
	}
	w, ok := policy.TemplateOf(obj)
	if !ok {
		return reconcile.Result{}, nil
	}
	name := accessName(w.Workload)
	want, err := r.grant(ctx, w)
	if err != nil {
		return reconcile.Result{}, err
	}
	if !obj.GetDeletionTimestamp().IsZero() {
		want = nil
	}
	// Pods that run already keep what they were started with: a Lease
	// name they hold stays granted, to their service account, until no
	// pod of that name is left, so that editing or deleting a policy
	// does not make a running command lose its lock.
	kept, err := r.inUse(ctx, key.Namespace, name, want)
	if err != nil {
		return reconcile.Result{}, err
	}
	want, unmadeWant, err := r.grantable(ctx, key.Namespace, w, want, true)
	if err != nil {
		return reconcile.Result{}, err
	}
	kept, unmadeKept, err := r.grantable(ctx, key.Namespace, w, kept, false)
	if err != nil {
		return reconcile.Result{}, err
	}
	grant, unmade := want.merge(kept), unmadeWant || unmadeKept
	if grant == nil {
		return reconcile.Result{}, r.revoke(ctx, key.Namespace, name)
	}

	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, role, func() error {
		metav1.SetMetaDataLabel(&role.ObjectMeta, wrap.LabelManagedBy, wrap.ManagedByWebhook)
		role.Rules = grant.rules()
		return setOwner(obj, role, r.Client)
	}); err != nil {
		return reconcile.Result{}, fmt.Errorf("keeping Role %s/%s: %w", key.Namespace, name, err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, binding, func() error {
		metav1.SetMetaDataLabel(&binding.ObjectMeta, wrap.LabelManagedBy, wrap.ManagedByWebhook)
		binding.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name}
		binding.Subjects = nil
		for _, sa := range grant.serviceAccounts {
			binding.Subjects = append(binding.Subjects, rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: key.Namespace, Name: sa})
		}
		return setOwner(obj, binding, r.Client)
	}); err != nil {
		return reconcile.Result{}, fmt.Errorf("keeping RoleBinding %s/%s: %w", key.Namespace, name, err)
	}
	if kept != nil || unmade {
		// To drop names kept for pods once those pods are gone, and a
		// name granted before its Lease existed once somebody other than
		// klock creates that Lease (nothing here watches Leases).
		return reconcile.Result{RequeueAfter: inUseRecheck}, nil
	}
	return reconcile.Result{}, nil
}

// inUseRecheck is how often a Role that keeps Lease names for running
// pods, or grants a Lease that does not exist yet, is checked again.
const inUseRecheck = 2 * time.Minute

// grant says what w's service account needs, or nil when w is not
// wrapped, or not to be granted.
func (r *Reconciler) grant(ctx context.Context, w policy.WorkloadTemplate) (*leaseGrant, error) {
	pod := w.Pod()
	if slices.Contains(systemNamespaces, pod.Namespace) {
		return nil, nil
	}
	ns := &metav1.PartialObjectMetadata{}
	ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	if err := r.Client.Get(ctx, types.NamespacedName{Name: pod.Namespace}, ns); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	serves, err := policy.ServedBy(ctx, r.Client, r.WebhookConfiguration)
	if err != nil {
		return nil, err
	}
	if !serves(ns.Labels, pod.Labels) {
		return nil, nil // the webhook never sees its pods
	}
	var policies klockv1alpha1.ClusterLockPolicyList
	if err := r.Client.List(ctx, &policies); err != nil {
		return nil, err
	}
	applied, _, err := policy.ApplyPolicies(pod, policy.Candidates(policies.Items, pod, ns.Labels), w.Workload)
	if err != nil || !wrap.Wants(pod) {
		return nil, nil // its pods are denied, or not wrapped: nothing to grant
	}
	if r.Mode != ModeAll && (applied == nil || !applied.Spec.GrantLeaseAccess) {
		return nil, nil
	}
	names, err := wrap.LeaseNames(pod.Annotations)
	if err != nil {
		return nil, nil // its pods are denied: nothing to grant
	}
	// One rule for every name: with cleanup-lease, delete also covers the
	// queue, which klock does not delete, but which update alone could
	// empty as well.
	verbs := Verbs(pod.Annotations[wrap.AnnotationCleanupLease] == "true")
	return &leaseGrant{
		serviceAccounts: []string{cmp.Or(pod.Spec.ServiceAccountName, "default")},
		leases:          names,
		verbs:           slices.DeleteFunc(verbs, func(v string) bool { return v == "create" }),
	}, nil
}

// grantable returns g without the Lease names that may not be granted
// (see refusal), logging why each is left out, or nil when none is left.
// The names come from the workload's own annotations, which anyone who
// may create the workload writes: granting them unchecked would give them
// update and delete on any Lease of the namespace, such as an operator's
// leader election Lease, which a lock's slot or queue name can hit as well
// as its lease (a lease "operator" with max-holders 2 names "operator-1").
// A name granted earlier and refused now (its Lease was created since, by
// someone else) is dropped from the Role too.
//
// whole says that g is one lock's Leases, granted all or none: a lock
// that may not have one of them cannot run, and the others would be
// granted for nothing. Otherwise (names kept for running pods, of
// whatever locks) each name is judged alone.
//
// unmade says that a name granted has no Lease yet: granted now, it must be
// checked again, in case somebody other than klock creates that Lease.
func (r *Reconciler) grantable(ctx context.Context, ns string, w policy.WorkloadTemplate, g *leaseGrant, whole bool) (_ *leaseGrant, unmade bool, _ error) {
	if g == nil {
		return nil, false, nil
	}
	var leases []string
	for _, name := range g.leases {
		why, missing, err := r.refusal(ctx, ns, name)
		if err != nil {
			return nil, false, err
		}
		if why != "" {
			ctrl.LoggerFrom(ctx).Info("not granting the workload's Lease", "kind", w.Kind, "workload", w.Name, "lease", name, "reason", why, "wholeLock", whole)
			if whole {
				return nil, false, nil
			}
			continue
		}
		unmade = unmade || missing
		leases = append(leases, name)
	}
	if len(leases) == 0 {
		return nil, false, nil
	}
	out := *g
	out.leases = leases
	return &out, unmade, nil
}

// refusal reads the Lease name in ns, through the API server (no cache of
// every Lease in the cluster), and says why it may not be granted, or ""
// when it may; missing says the Lease does not exist yet.
func (r *Reconciler) refusal(ctx context.Context, ns, name string) (why string, missing bool, _ error) {
	if why := invalidLeaseName(name); why != "" {
		return why, false, nil
	}
	lease := &metav1.PartialObjectMetadata{}
	lease.SetGroupVersionKind(coordinationv1.SchemeGroupVersion.WithKind("Lease"))
	err := r.API.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, lease)
	if apierrors.IsNotFound(err) {
		return "", true, nil // klock will create it
	}
	if err != nil {
		return "", false, fmt.Errorf("reading Lease %s/%s, to check that klock created it: %w", ns, name, err)
	}
	return foreignLease(lease), false, nil
}

// inUse returns what the existing Role name grants beyond want that wrapped
// pods in ns still use: the names of their locks' Leases (a pod's lease,
// slots and queue, from its annotations: wrap.LeaseNames), with the verbs
// and service accounts they were granted. It reads the pods' metadata from
// the API server, only when there is such a difference, and then whole
// pods, for those whose locks use a name not yet kept, until one is
// wrapped for it: annotations anyone may write, so they alone must not
// keep a grant alive; wrapped, a pod's klock carries its annotations in
// its flags.
func (r *Reconciler) inUse(ctx context.Context, ns, name string, want *leaseGrant) (*leaseGrant, error) {
	var role rbacv1.Role
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &role); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	if role.Labels[wrap.LabelManagedBy] != wrap.ManagedByWebhook {
		return nil, nil // not ours: nothing of it is kept
	}
	var old, verbs []string
	for _, rule := range role.Rules {
		if len(rule.ResourceNames) > 0 {
			old = append(old, rule.ResourceNames...)
			verbs = union(verbs, rule.Verbs)
		}
	}
	extra := slices.DeleteFunc(old, func(l string) bool { return want != nil && slices.Contains(want.leases, l) })
	if len(extra) == 0 {
		return nil, nil
	}
	var pods metav1.PartialObjectMetadataList
	pods.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	if err := r.API.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("listing pods in %s, to keep the Leases they hold: %w", ns, err)
	}
	var held []string
	for _, p := range pods.Items {
		if p.Annotations[wrap.AnnotationInjected] == "" || len(uses(p.Annotations, extra, held)) == 0 {
			continue
		}
		var pod corev1.Pod
		if err := r.API.Get(ctx, client.ObjectKeyFromObject(&p), &pod); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return nil, fmt.Errorf("reading pod %s/%s, to keep the Leases it holds: %w", ns, p.Name, err)
		}
		// A pod that has finished holds nothing any more.
		done := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
		if !done && wrap.WrappedByAnyVersion(&pod, r.Wrap) {
			held = append(held, uses(pod.Annotations, extra, held)...)
		}
	}
	if len(held) == 0 {
		return nil, nil
	}
	var binding rbacv1.RoleBinding
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &binding); client.IgnoreNotFound(err) != nil {
		return nil, err
	}
	var accounts []string
	for _, s := range binding.Subjects {
		accounts = append(accounts, s.Name)
	}
	return &leaseGrant{serviceAccounts: union(accounts, nil), leases: union(held, nil), verbs: verbs}, nil
}

// uses returns the names of the Leases that the lock of a pod with these
// annotations uses, among those in extra and not in held.
func uses(annotations map[string]string, extra, held []string) []string {
	names, err := wrap.LeaseNames(annotations)
	if err != nil {
		return nil // no pod is wrapped with such annotations
	}
	return slices.DeleteFunc(names, func(n string) bool { return !slices.Contains(extra, n) || slices.Contains(held, n) })
}

// revoke deletes the Role and RoleBinding named name, if the webhook made
// them.
func (r *Reconciler) revoke(ctx context.Context, ns, name string) error {
	for _, obj := range []client.Object{&rbacv1.RoleBinding{}, &rbacv1.Role{}} {
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return err
		}
		if obj.GetLabels()[wrap.LabelManagedBy] != wrap.ManagedByWebhook {
			continue // not ours
		}
		if err := r.Client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// setOwner makes workload the controller of obj, for garbage collection.
// It does not block the workload's deletion: that would need update on
// every workload kind's finalizers where OwnerReferencesPermissionEnforcement
// is on, and a Role has nothing to finish first.
func setOwner(workload, obj client.Object, c client.Client) error {
	return controllerutil.SetControllerReference(workload, obj, c.Scheme(), controllerutil.WithBlockOwnerDeletion(false))
}

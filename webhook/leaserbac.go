package webhook

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

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
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

// Which wrapped workloads get a Role for their Lease (--lease-access).
const (
	LeaseAccessOff    = "off"
	LeaseAccessPolicy = "policy" // those whose policy sets grantLeaseAccess
	LeaseAccessAll    = "all"    // every wrapped workload
)

// Labels on the Roles and RoleBindings the webhook keeps.
const (
	managedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "klock-webhook"
)

// ManagedBy selects the Roles and RoleBindings the webhook keeps.
var ManagedBy = map[string]string{managedByLabel: managedByValue}

// LeaseAccessReconciler keeps, for each wrapped workload that should have
// it, a Role and a RoleBinding that let the workload's service account use
// its Lease and no other: get, watch and update (and delete with
// cleanup-lease) on that name alone, and create, which RBAC cannot limit
// by name. They are owned by the workload, so they go when it goes, and
// are deleted when it stops being wrapped or granted.
type LeaseAccessReconciler struct {
	Client client.Client
	Mode   string
}

// SetupWithManager runs one controller per workload kind, on the leader.
func (r *LeaseAccessReconciler) SetupWithManager(mgr ctrl.Manager) error {
	for _, obj := range workloadObjects() {
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
			For(obj).
			Owns(&rbacv1.Role{}).
			Owns(&rbacv1.RoleBinding{}).
			Watches(&klockv1alpha1.ClusterLockPolicy{}, byPolicy).
			Watches(&corev1.Namespace{}, byNamespace, builder.OnlyMetadata).
			Complete(reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
				return reconcile.Result{}, r.reconcile(ctx, obj.DeepCopyObject().(client.Object), req.NamespacedName)
			}))
		if err != nil {
			return err
		}
	}
	return nil
}

// requestsFor lists the workloads of obj's kind, in namespace ns or all.
func (r *LeaseAccessReconciler) requestsFor(ctx context.Context, obj client.Object, ns string) []reconcile.Request {
	gvk, err := r.Client.GroupVersionKindFor(obj)
	if err != nil {
		return nil
	}
	typed, err := r.Client.Scheme().New(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
	if err != nil {
		return nil
	}
	tl := typed.(client.ObjectList)
	if err := r.Client.List(ctx, tl, client.InNamespace(ns)); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	_ = metaEach(tl, func(o client.Object) {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(o)})
	})
	return reqs
}

func (r *LeaseAccessReconciler) reconcile(ctx context.Context, obj client.Object, key types.NamespacedName) error {
	if err := r.Client.Get(ctx, key, obj); err != nil {
		return client.IgnoreNotFound(err) // its Role goes by garbage collection
	}
	w, ok := templateOf(obj)
	if !ok {
		return nil
	}
	name := accessName(w.Workload)
	grant, err := r.grant(ctx, w)
	if err != nil {
		return err
	}
	if grant == nil || !obj.GetDeletionTimestamp().IsZero() {
		return r.revoke(ctx, key.Namespace, name)
	}

	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, role, func() error {
		role.Labels = ManagedBy
		role.Rules = grant.rules
		return setOwner(obj, role, r.Client)
	}); err != nil {
		return fmt.Errorf("keeping Role %s/%s: %w", key.Namespace, name, err)
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, binding, func() error {
		binding.Labels = ManagedBy
		binding.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name}
		binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: key.Namespace, Name: grant.serviceAccount}}
		return setOwner(obj, binding, r.Client)
	}); err != nil {
		return fmt.Errorf("keeping RoleBinding %s/%s: %w", key.Namespace, name, err)
	}
	return nil
}

type leaseGrant struct {
	serviceAccount string
	rules          []rbacv1.PolicyRule
}

// grant says what w's service account needs, or nil when w is not
// wrapped or not to be granted.
func (r *LeaseAccessReconciler) grant(ctx context.Context, w workloadTemplate) (*leaseGrant, error) {
	pod := w.pod()
	var policies klockv1alpha1.ClusterLockPolicyList
	if err := r.Client.List(ctx, &policies); err != nil {
		return nil, err
	}
	var applied *klockv1alpha1.ClusterLockPolicy
	if len(policies.Items) > 0 {
		ns := &metav1.PartialObjectMetadata{}
		ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
		if err := r.Client.Get(ctx, types.NamespacedName{Name: pod.Namespace}, ns); err != nil {
			return nil, client.IgnoreNotFound(err)
		}
		var err error
		if applied, _, err = ApplyPolicies(pod, Candidates(policies.Items, pod, ns.Labels), w.Workload); err != nil {
			return nil, nil // its pods are denied: nothing to grant
		}
	}
	if !Wants(pod) {
		return nil, nil
	}
	if r.Mode != LeaseAccessAll && (applied == nil || !applied.Spec.GrantLeaseAccess) {
		return nil, nil
	}
	verbs := LeaseVerbs(pod.Annotations[AnnotationCleanupLease] == "true")
	named := slices.DeleteFunc(slices.Clone(verbs), func(v string) bool { return v == "create" })
	return &leaseGrant{
		serviceAccount: cmp.Or(pod.Spec.ServiceAccountName, "default"),
		rules: []rbacv1.PolicyRule{
			{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"}, ResourceNames: []string{pod.Annotations[AnnotationLease]}, Verbs: named},
			// RBAC checks create before the name is known: it cannot
			// be limited to one.
			{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		},
	}, nil
}

// revoke deletes the Role and RoleBinding named name, if the webhook made
// them.
func (r *LeaseAccessReconciler) revoke(ctx context.Context, ns, name string) error {
	for _, obj := range []client.Object{&rbacv1.RoleBinding{}, &rbacv1.Role{}} {
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return err
		}
		if obj.GetLabels()[managedByLabel] != managedByValue {
			continue // not ours
		}
		if err := r.Client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// accessName names a workload's Role and RoleBinding:
// klock-lease-<kind>-<name>, shortened with a hash when too long.
func accessName(w Workload) string {
	name := "klock-lease-" + strings.ToLower(w.Kind) + "-" + w.Name
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:240] + "-" + hex.EncodeToString(sum[:])[:12]
}

// setOwner makes workload the controller of obj, for garbage collection.
// It does not block the workload's deletion: that would need update on
// every workload kind's finalizers where OwnerReferencesPermissionEnforcement
// is on, and a Role has nothing to finish first.
func setOwner(workload, obj client.Object, c client.Client) error {
	return controllerutil.SetControllerReference(workload, obj, c.Scheme(), controllerutil.WithBlockOwnerDeletion(false))
}

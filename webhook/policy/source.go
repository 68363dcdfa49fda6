package policy

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/lru"
	"sigs.k8s.io/controller-runtime/pkg/client"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

// ClusterPolicies reads policies and namespaces from the manager's cache,
// and a pod's owners from the API server: one GET of the owner's metadata
// for a Job's or a ReplicaSet's pod, remembered by the owner's namespace
// and UID, since the pods of one owner come in bursts and its own owner does
// not change.
type ClusterPolicies struct {
	cache  client.Reader
	api    client.Reader
	owners *lru.Cache // ownerKey → Workload
}

// ownerKey names a cached owner. The ownerReference it comes from is
// written by the pod's author: the namespace keeps a pod in one namespace
// from reading or filling the entry of an owner in another, and the kind
// and name keep a reference that does not match the owner read under its
// UID from hitting the entry.
type ownerKey struct {
	namespace  string
	uid        types.UID
	kind, name string
}

// NewClusterPolicies returns a ClusterPolicies that reads policies and
// namespaces through cache and owners through api.
func NewClusterPolicies(cache, api client.Reader) *ClusterPolicies {
	return &ClusterPolicies{cache: cache, api: api, owners: lru.New(4096)}
}

// Candidates returns the valid policies whose namespace and pod selectors
// match pod, from the cache; a namespace created a moment ago is read from
// the API server.
func (s *ClusterPolicies) Candidates(ctx context.Context, pod *corev1.Pod) ([]*klockv1alpha1.ClusterLockPolicy, error) {
	var list klockv1alpha1.ClusterLockPolicyList
	if err := s.cache.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing ClusterLockPolicies: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	ns := &metav1.PartialObjectMetadata{}
	ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	err := s.cache.Get(ctx, types.NamespacedName{Name: pod.Namespace}, ns)
	if apierrors.IsNotFound(err) {
		// Created a moment ago, and not in the cache yet.
		err = s.api.Get(ctx, types.NamespacedName{Name: pod.Namespace}, ns)
	}
	if err != nil {
		return nil, fmt.Errorf("reading namespace %s: %w", pod.Namespace, err)
	}
	return Candidates(list.Items, pod, ns.Labels), nil
}

// Current fails unless the cache holds policy name at generation
// generation or later.
func (s *ClusterPolicies) Current(ctx context.Context, name string, generation int64) error {
	var p klockv1alpha1.ClusterLockPolicy
	if err := s.cache.Get(ctx, types.NamespacedName{Name: name}, &p); err != nil {
		return fmt.Errorf("ClusterLockPolicy %s is not known to this replica yet: %w", name, err)
	}
	if p.Generation < generation {
		return fmt.Errorf("ClusterLockPolicy %s: this replica has generation %d, the webhook configuration %d; it will catch up", name, p.Generation, generation)
	}
	return nil
}

// Workload returns the top of pod's chain of controllers: the CronJob of
// a Job's pod, the Deployment of a ReplicaSet's, else the pod's own
// controller, or the pod itself.
func (s *ClusterPolicies) Workload(ctx context.Context, pod *corev1.Pod) (Workload, error) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return Workload{Kind: "Pod", Name: pod.Name}, nil
	}
	own := Workload{Kind: ref.Kind, Name: ref.Name}
	gv, _ := schema.ParseGroupVersion(ref.APIVersion)
	var parentKind string
	switch {
	case gv.Group == "batch" && ref.Kind == "Job":
		parentKind = "CronJob"
	case gv.Group == "apps" && ref.Kind == "ReplicaSet":
		parentKind = "Deployment"
	default:
		return own, nil
	}
	key := ownerKey{namespace: pod.Namespace, uid: ref.UID, kind: ref.Kind, name: ref.Name}
	if w, ok := s.owners.Get(key); ok {
		return w.(Workload), nil
	}
	owner := &metav1.PartialObjectMetadata{}
	owner.SetGroupVersionKind(gv.WithKind(ref.Kind))
	if err := s.api.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: ref.Name}, owner); err != nil {
		// Not found too: without the owner, which policies select the pod
		// is unknown, and it must not pass unwrapped by mistake.
		return Workload{}, fmt.Errorf("reading the pod's %s %s, to find its workload: %w", ref.Kind, ref.Name, err)
	}
	if err := sameOwner(owner, ref, pod.Namespace); err != nil {
		// An ownerReference whose UID is not the named object's is a pod's
		// author naming another workload's owner, or an owner replaced by
		// one of the same name: either way its workload is unknown, as
		// when the owner is not found.
		return Workload{}, err
	}
	if up := metav1.GetControllerOf(owner); up != nil && up.Kind == parentKind {
		own = Workload{Kind: up.Kind, Name: up.Name}
	}
	s.owners.Add(key, own)
	return own, nil
}

// sameOwner fails unless owner, read from the API server, is the object
// ref names in namespace ns.
func sameOwner(owner *metav1.PartialObjectMetadata, ref *metav1.OwnerReference, ns string) error {
	if owner.GetUID() == ref.UID && owner.GetNamespace() == ns && owner.GetName() == ref.Name && owner.Kind == ref.Kind {
		return nil
	}
	// The owner's own uid is not told: a pod's author who may not read the
	// owner would learn it here, and could then name that owner for real.
	return fmt.Errorf("the pod's ownerReference names %s %s/%s with uid %s, which is not that object's uid: not the pod's owner, so its workload is unknown; "+
		"leave ownerReferences to the pod's controller",
		ref.Kind, ns, ref.Name, ref.UID)
}

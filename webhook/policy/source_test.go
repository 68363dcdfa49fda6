package policy

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/klock-io/klock/webhook/internal/builders"
)

// ownerReader answers every Get with a copy of its object, whatever the
// key, as an API server would after the named object was replaced, or for
// a name the pod's author chose; it counts the reads.
type ownerReader struct {
	client.Reader
	obj   metav1.PartialObjectMetadata
	reads int
}

func (r *ownerReader) Get(_ context.Context, _ client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	r.reads++
	out := obj.(*metav1.PartialObjectMetadata)
	gvk := out.GroupVersionKind()
	*out = *r.obj.DeepCopy()
	if out.Kind == "" {
		out.SetGroupVersionKind(gvk)
	}
	return nil
}

func replicaSet(ns, name string, uid types.UID, deployment string) metav1.PartialObjectMetadata {
	rs := metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: uid}}
	rs.SetGroupVersionKind(metav1.SchemeGroupVersion.WithKind("ReplicaSet"))
	rs.Kind, rs.APIVersion = "ReplicaSet", "apps/v1"
	if deployment != "" {
		rs.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: deployment, UID: "deploy-" + types.UID(deployment), Controller: ptr.To(true)}}
	}
	return rs
}

func ownedPod(ns string, rs string, uid types.UID) *corev1.Pod {
	pod := builders.MakePod("p", ns).Obj()
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs, UID: uid, Controller: ptr.To(true)}}
	return pod
}

func TestWorkloadOwner(t *testing.T) {
	cases := map[string]struct {
		pod   *corev1.Pod
		owner metav1.PartialObjectMetadata
		want  Workload
		err   string
	}{
		"the referenced owner: its Deployment is the workload": {
			pod:   ownedPod("team-a", "web-1", "uid-1"),
			owner: replicaSet("team-a", "web-1", "uid-1", "web"),
			want:  Workload{Kind: "Deployment", Name: "web"},
		},
		"an owner with another uid: not the pod's owner": {
			pod:   ownedPod("team-a", "web-1", "uid-victim"),
			owner: replicaSet("team-a", "web-1", "uid-1", "web"),
			err:   "names ReplicaSet team-a/web-1 with uid uid-victim, which is not that object's uid",
		},
		"an owner in another namespace: not the pod's owner": {
			pod:   ownedPod("team-a", "web-1", "uid-1"),
			owner: replicaSet("team-b", "web-1", "uid-1", "web"),
			err:   "names ReplicaSet team-a/web-1 with uid uid-1, which is not that object's uid",
		},
		"an owner of another name: not the pod's owner": {
			pod:   ownedPod("team-a", "web-1", "uid-1"),
			owner: replicaSet("team-a", "web-2", "uid-1", "web"),
			err:   "names ReplicaSet team-a/web-1 with uid uid-1, which is not that object's uid",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			api := &ownerReader{obj: tc.owner}
			s := NewClusterPolicies(nil, api)
			got, err := s.Workload(context.Background(), tc.pod)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				// The object read is not told about: its uid would let
				// a pod's author who may not read it name it for real.
				if strings.Contains(err.Error(), string(tc.owner.GetUID())) && tc.owner.GetUID() != tc.pod.OwnerReferences[0].UID {
					t.Errorf("err = %v tells the uid of the object read", err)
				}
				if s.owners.Len() != 0 {
					t.Errorf("an owner that is not the pod's was cached")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Workload (-want,+got):\n%s", diff)
			}
		})
	}
}

// A pod in one namespace that copies the uid of an owner in another must
// neither get that owner's cached workload nor fill the cache for it.
func TestWorkloadOwnerCacheByNamespace(t *testing.T) {
	api := &ownerReader{obj: replicaSet("victim", "web-1", "uid-1", "web")}
	s := NewClusterPolicies(nil, api)
	if w, err := s.Workload(context.Background(), ownedPod("victim", "web-1", "uid-1")); err != nil || w.Name != "web" {
		t.Fatalf("victim's pod: %v, %v", w, err)
	}

	// The attacker's namespace has a ReplicaSet of the same name, its own,
	// with no Deployment; its pod names the victim's uid.
	api.obj = replicaSet("attacker", "web-1", "uid-2", "")
	if w, err := s.Workload(context.Background(), ownedPod("attacker", "web-1", "uid-1")); err == nil {
		t.Fatalf("attacker's pod with the victim's uid: workload %v, want an error", w)
	}
	if api.reads != 2 {
		t.Errorf("reads = %d, want 2: the victim's cached owner was used for the attacker's pod", api.reads)
	}

	// In the victim's namespace, a reference with the cached uid but
	// another owner's name is read again, and refused.
	api.obj = replicaSet("victim", "standalone", "uid-3", "")
	if w, err := s.Workload(context.Background(), ownedPod("victim", "standalone", "uid-1")); err == nil {
		t.Fatalf("pod naming standalone with web-1's uid: workload %v, want an error", w)
	}

	// In the other order: the attacker's pod comes first and must not
	// leave its own workload in the victim's entry, whether its
	// ReplicaSet's uid differs (it is refused) or, as a fake API server
	// may have it, is the same (it is cached for its namespace alone).
	api = &ownerReader{obj: replicaSet("attacker", "web-1", "uid-2", "")}
	s = NewClusterPolicies(nil, api)
	if w, err := s.Workload(context.Background(), ownedPod("attacker", "web-1", "uid-1")); err == nil {
		t.Fatalf("attacker's pod with the victim's uid: workload %v, want an error", w)
	}
	api.obj = replicaSet("victim", "web-1", "uid-1", "web")
	if w, err := s.Workload(context.Background(), ownedPod("victim", "web-1", "uid-1")); err != nil || w.Name != "web" {
		t.Fatalf("victim's pod after the attacker's: %v, %v; want Deployment web", w, err)
	}
	api = &ownerReader{obj: replicaSet("attacker", "web-1", "uid-1", "")}
	s = NewClusterPolicies(nil, api)
	if w, err := s.Workload(context.Background(), ownedPod("attacker", "web-1", "uid-1")); err != nil || w.Kind != "ReplicaSet" {
		t.Fatalf("attacker's pod: %v, %v", w, err)
	}
	api.obj = replicaSet("victim", "web-1", "uid-1", "web")
	w, err := s.Workload(context.Background(), ownedPod("victim", "web-1", "uid-1"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Workload{Kind: "Deployment", Name: "web"}, w); diff != "" {
		t.Errorf("victim's workload (-want,+got):\n%s", diff)
	}
}

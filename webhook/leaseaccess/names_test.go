package leaseaccess

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	k8stesting "k8s.io/client-go/testing"
	crfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/policy"
	"github.com/klock-io/klock/webhook/wrap"
)

// sarClient answers SubjectAccessReviews from allowed, keyed "verb name"
// ("verb " for a check on every Lease of the namespace), and counts them.
func sarClient(allowed []string, objects ...runtime.Object) (*fake.Clientset, *atomic.Int32) {
	client := fake.NewClientset(objects...)
	var reviews atomic.Int32
	client.PrependReactor("create", "subjectaccessreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		review := action.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		attrs := review.Spec.ResourceAttributes
		review.Status.Allowed = slices.Contains(allowed, attrs.Verb+" "+attrs.Name)
		return true, review, nil
	})
	return client, &reviews
}

// on is what a Role with verbs on names (none: every Lease) allows.
func on(names []string, verbs ...string) []string {
	var out []string
	for _, v := range verbs {
		if len(names) == 0 {
			out = append(out, v+" ")
		}
		for _, n := range names {
			out = append(out, v+" "+n)
		}
	}
	return out
}

// The review checks every Lease the pod's lock uses, and its warning
// names those the account lacks.
func TestReviewerChecksEveryLeaseOfTheLock(t *testing.T) {
	const grant = "grant it with: kubectl -n ns create role klock-lease-holder --verb=get,create,update,watch --resource=leases.coordination.k8s.io && " +
		"kubectl -n ns create rolebinding klock-lease-holder-default --role=klock-lease-holder --serviceaccount=ns:default"
	mutex := builders.MakePod("p", "ns").Lease("nightly")
	counting := builders.MakePod("p", "ns").Lease("nightly").Annotation(wrap.AnnotationMaxHolders, "3")
	for _, tc := range []struct {
		name        string
		pod         *corev1.Pod
		allowed     []string
		want        string // "" for no warning
		wantReviews int32
	}{
		{name: "every Lease of the namespace: one review per verb", pod: mutex.Obj(),
			allowed: on(nil, "get", "create", "update", "watch"), wantReviews: 4},
		{name: "by name, the lease and its queue, as the Lease access controller grants", pod: mutex.Obj(),
			allowed:     append(on(nil, "create"), on([]string{"nightly", "nightly-queue"}, "get", "update", "watch")...),
			wantReviews: 4 + 3*2},
		{name: "by name, the lease alone, as a mutex used to need", pod: mutex.Obj(),
			allowed: append(on(nil, "create"), on([]string{"nightly"}, "get", "update", "watch")...),
			want:    "service account ns/default may not get, update, watch leases in namespace ns (on the Leases nightly-queue of its lock), so klock will fail when the pod runs; " + grant},
		{name: "a counting lock's slots are checked", pod: counting.Obj(),
			allowed: append(on(nil, "create"), on([]string{"nightly", "nightly-1", "nightly-queue"}, "get", "update", "watch")...),
			want:    "may not get, update, watch leases in namespace ns (on the Leases nightly-2 of its lock)", wantReviews: 4 + 3*4},
		{name: "a counting lock whose waiters race has no queue", pod: counting.Annotation(wrap.AnnotationOrder, "any").Obj(),
			allowed: append(on(nil, "create"), on([]string{"nightly", "nightly-1", "nightly-2"}, "get", "update", "watch")...)},
		{name: "nothing allowed", pod: mutex.Obj(),
			want: "service account ns/default may not get, create, update, watch leases in namespace ns (on the Leases nightly, nightly-queue of its lock), so klock will fail when the pod runs; " + grant},
		{name: "many Leases lacking: the first few are named", pod: builders.MakePod("p", "ns").Lease("nightly").Annotation(wrap.AnnotationMaxHolders, "10").Obj(),
			allowed: on(nil, "create"), want: "(on the Leases nightly, nightly-1, nightly-2, nightly-3 and 7 more of its lock)"},
		{name: "delete, with cleanup, on the one Lease klock deletes", pod: builders.MakePod("p", "ns").Lease("nightly").Annotation(wrap.AnnotationCleanupLease, "true").Obj(),
			allowed: append(append(on(nil, "create"), on([]string{"nightly", "nightly-queue"}, "get", "update", "watch")...), on([]string{"nightly"}, "delete")...)},
		{name: "create is not checked by name", pod: mutex.Obj(),
			allowed: on([]string{"nightly", "nightly-queue"}, "get", "update", "watch", "create"),
			want:    "may not create leases in namespace ns, so klock will fail"},
		{name: "annotations the mutation denies: nothing asked", pod: builders.MakePod("p", "ns").Lease("nightly").Annotation(wrap.AnnotationMaxHolders, "0").Obj()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, reviews := sarClient(tc.allowed)
			r := NewReviewer(client)
			got := r.Warnings(context.Background(), tc.pod)
			switch {
			case tc.want == "" && len(got) != 0:
				t.Errorf("warnings %q, want none", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want)):
				t.Errorf("warnings %q, want one containing %q", got, tc.want)
			}
			if tc.wantReviews != 0 && reviews.Load() != tc.wantReviews {
				t.Errorf("%d SubjectAccessReviews, want %d", reviews.Load(), tc.wantReviews)
			}
			before := reviews.Load()
			if again := r.Warnings(context.Background(), tc.pod); !cmp.Equal(got, again) || reviews.Load() != before {
				t.Errorf("asked again: warnings %q, %d more reviews; want the answer kept", again, reviews.Load()-before)
			}
		})
	}
}

// A Lease of the lock other than its lease (here the queue) that somebody
// else made is warned of: the controller grants none of the lock.
func TestReviewerWarnsOfForeignQueue(t *testing.T) {
	client, _ := sarClient(on(nil, "get", "create", "update", "watch"),
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "op-queue"}})
	got := NewReviewer(client).WithLeaseAccess().Warnings(context.Background(), builders.MakePod("p", "ns").Lease("op").Obj())
	want := "Lease ns/op-queue exists and was not created by klock (it lacks the label app.kubernetes.io/managed-by=klock), so it is not granted to the pod's service account by the Lease access controller, nor are the other Leases of its lock (op, op-queue)"
	if len(got) != 1 || !strings.Contains(got[0], want) {
		t.Errorf("warnings %q, want one containing %q", got, want)
	}
}

func TestGrantableJudgesTheLockWhole(t *testing.T) {
	api := crfake.NewClientBuilder().WithScheme(clientgoscheme.Scheme).WithObjects(
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "op-queue", Labels: map[string]string{"app": "operator"}}},
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "mine", Labels: map[string]string{klock.ManagedByLabel: klock.ManagedByValue}}},
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "mine-queue", Labels: map[string]string{klock.ManagedByLabel: klock.ManagedByValue}}},
	).Build()
	r := &Reconciler{API: api}
	for _, tc := range []struct {
		name       string
		leases     []string
		whole      bool
		want       []string
		wantUnmade bool
	}{
		{name: "one Lease of the lock is somebody else's: none is granted", leases: []string{"op", "op-queue"}, whole: true},
		{name: "names kept for running pods are judged one by one", leases: []string{"op", "op-queue"}, want: []string{"op"}, wantUnmade: true},
		{name: "an invalid slot name refuses the lock", leases: []string{"mine", "Mine-1"}, whole: true},
		{name: "klock's own Leases", leases: []string{"mine", "mine-queue"}, whole: true, want: []string{"mine", "mine-queue"}},
		{name: "a slot not made yet is granted, and checked again later", leases: []string{"mine", "mine-1", "mine-queue"}, whole: true,
			want: []string{"mine", "mine-1", "mine-queue"}, wantUnmade: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &leaseGrant{serviceAccounts: []string{"default"}, leases: tc.leases, verbs: []string{"get", "update", "watch"}}
			got, unmade, err := r.grantable(context.Background(), "ns", policy.WorkloadTemplate{}, g, tc.whole)
			if err != nil {
				t.Fatal(err)
			}
			var granted []string
			if got != nil {
				granted = got.leases
			}
			if !cmp.Equal(granted, tc.want) || unmade != tc.wantUnmade {
				t.Errorf("granted %q, unmade %v; want %q, %v", granted, unmade, tc.want, tc.wantUnmade)
			}
		})
	}
}

// A Role keeps, for a wrapped pod that runs, every Lease of its lock it
// granted: the lease, the slots and the queue its annotations (carried by
// its klock's flags) name.
func TestInUseKeepsTheWholeLock(t *testing.T) {
	opts := wrap.Options{Image: "ghcr.io/klock-io/klock:v1"}
	wrapped := func(name string, b *builders.PodBuilder) *corev1.Pod {
		pod := b.Container("app", "busybox", "work").Obj()
		pod.Name = name
		if _, err := wrap.Mutate(pod, opts, nil); err != nil {
			t.Fatal(err)
		}
		return pod
	}
	counting := wrapped("counting", builders.MakePod("", "ns").Lease("old").Annotation(wrap.AnnotationMaxHolders, "2"))
	// Annotations written on a running pod after its admission: its klock
	// runs without them, so they keep nothing.
	forged := wrapped("forged", builders.MakePod("", "ns").Lease("other"))
	forged.Annotations[wrap.AnnotationMaxHolders] = "3"
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "klock-lease-cronjob-c", Labels: map[string]string{wrap.LabelManagedBy: wrap.ManagedByWebhook}},
		Rules:      (&leaseGrant{leases: []string{"new", "new-queue", "old", "old-1", "old-queue", "other", "other-1", "other-2", "other-queue"}, verbs: []string{"get", "update", "watch"}}).rules(),
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "klock-lease-cronjob-c"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "ns", Name: "runner"}},
	}
	c := crfake.NewClientBuilder().WithScheme(clientgoscheme.Scheme).WithObjects(role, binding, counting, forged).Build()
	r := &Reconciler{Client: c, API: c, Wrap: opts}
	want := &leaseGrant{leases: []string{"new", "new-queue"}}
	got, err := r.inUse(context.Background(), "ns", "klock-lease-cronjob-c", want)
	if err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("nothing kept")
	}
	if diff := cmp.Diff([]string{"old", "old-1", "old-queue"}, got.leases); diff != "" {
		t.Errorf("kept (-want,+got):\n%s", diff)
	}
	if !cmp.Equal(got.serviceAccounts, []string{"runner"}) || !cmp.Equal(got.verbs, []string{"get", "update", "watch"}) {
		t.Errorf("kept for %q with verbs %q", got.serviceAccounts, got.verbs)
	}
}

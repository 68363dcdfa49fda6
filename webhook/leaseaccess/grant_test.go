package leaseaccess

import (
	"context"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/policy"
)

func TestAccessName(t *testing.T) {
	if got := accessName(policy.Workload{Kind: "CronJob", Name: "backup"}); got != "klock-lease-cronjob-backup" {
		t.Errorf("accessName = %q", got)
	}
	long := accessName(policy.Workload{Kind: "Deployment", Name: strings.Repeat("a", 253)})
	if len(long) != 253 || long == accessName(policy.Workload{Kind: "Deployment", Name: strings.Repeat("a", 252)}) {
		t.Errorf("long names must be shortened to 253 and stay distinct: %q", long)
	}
}

func TestLeaseRefusal(t *testing.T) {
	lease := func(labels map[string]string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "l", Labels: labels}}
	}
	cases := map[string]struct {
		why  string
		want string
	}{
		"an empty name is refused":                   {why: invalidLeaseName(""), want: "the Lease name is empty"},
		"a name that is no DNS subdomain is refused": {why: invalidLeaseName("Not_A_Lease"), want: `"Not_A_Lease" is not a Lease name`},
		"a valid name passes":                        {why: invalidLeaseName("cronjob-report")},
		"a Lease klock created passes":               {why: foreignLease(lease(map[string]string{klock.ManagedByLabel: klock.ManagedByValue}))},
		"a Lease without klock's label is refused": {
			why:  foreignLease(lease(map[string]string{"app": "operator"})),
			want: "Lease ns/l exists and was not created by klock (it lacks the label app.kubernetes.io/managed-by=klock)",
		},
		"a Lease another tool manages is refused": {
			why:  foreignLease(lease(map[string]string{klock.ManagedByLabel: "helm"})),
			want: "was not created by klock",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if tc.want == "" && tc.why != "" || !strings.Contains(tc.why, tc.want) {
				t.Errorf("refusal = %q, want %q", tc.why, tc.want)
			}
		})
	}
}

func TestReviewerWarnsOfForeignLease(t *testing.T) {
	client := fake.NewClientset(
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "operator-leader"}},
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "klocks", Labels: map[string]string{klock.ManagedByLabel: klock.ManagedByValue}}},
	)
	// Every SubjectAccessReview allows, so that only the Lease's owner
	// can cause a warning.
	client.PrependReactor("create", "subjectaccessreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		review := action.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
		review.Status.Allowed = true
		return true, review, nil
	})
	warnings := func(r *Reviewer, lease string) []string {
		return r.Warnings(context.Background(), builders.MakePod("p", "ns").Lease(lease).Obj())
	}
	r := NewReviewer(client).WithLeaseAccess()
	if got := warnings(r, "operator-leader"); len(got) != 1 || !strings.Contains(got[0], "Lease ns/operator-leader exists and was not created by klock") {
		t.Errorf("Lease not created by klock: warnings %q", got)
	}
	for _, lease := range []string{"klocks", "not-there-yet"} {
		if got := warnings(r, lease); len(got) != 0 {
			t.Errorf("Lease %s: warnings %q, want none", lease, got)
		}
	}
	if got := warnings(NewReviewer(client), "operator-leader"); len(got) != 0 {
		t.Errorf("without lease access the Lease is not read: warnings %q", got)
	}
}

// The control plane's namespaces are never granted a Lease, whatever a
// workload there names (it is decided before anything is read).
func TestNoGrantInSystemNamespaces(t *testing.T) {
	for _, ns := range []string{"kube-system", "kube-node-lease", "kube-public"} {
		cronJob := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: ns}}
		template := &corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"klock.io/lease": "kube-controller-manager"}}}
		r := &Reconciler{Mode: ModeAll}
		g, err := r.grant(context.Background(), policy.WorkloadTemplate{Workload: policy.Workload{Kind: "CronJob", Name: "c"}, Object: cronJob, Template: template})
		if g != nil || err != nil {
			t.Errorf("%s: grant %+v, err %v", ns, g, err)
		}
	}
}

// Package leaseaccess is about a wrapped pod's permission to use its Lease.
// Reviewer asks the API server, at admission, whether the pod's service
// account may get, create, update and watch the Lease, for the pod handler
// to warn when it may not. Reconciler (--lease-access) keeps, for each
// wrapped workload that should have it, a Role and RoleBinding that grant
// its service account that Lease and no other.
package leaseaccess

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/lru"

	"github.com/klock-io/klock/webhook/wrap"
)

// Reviewer asks the API server, with SubjectAccessReviews, whether a
// pod's service account may use its Lease, so that a missing permission is
// a warning at admission rather than a failure when the pod runs. Answers
// are kept for accessTTL: the pods of one workload come in bursts.
type Reviewer struct {
	client  kubernetes.Interface
	answers *lru.Cache // review key → accessAnswer
	// leaseAccess: the Lease access controller runs, and the webhook may
	// get Leases, so Warnings also says when it will not grant the Lease.
	leaseAccess bool
}

// WithLeaseAccess makes Warnings also say when the pod's Lease exists and
// was not created by klock, which the Lease access controller does not
// grant. It reads the Lease, with get on leases, which the webhook has
// when lease access is on.
func (a *Reviewer) WithLeaseAccess() *Reviewer {
	a.leaseAccess = true
	return a
}

const accessTTL = 30 * time.Second

type accessAnswer struct {
	warnings []string
	expires  time.Time
}

// NewReviewer returns a reviewer that uses client.
func NewReviewer(client kubernetes.Interface) *Reviewer {
	return &Reviewer{client: client, answers: lru.New(4096)}
}

// Warnings says what the pod's service account may not do to the pod's
// Lease, with the kubectl commands that grant it; nothing when it may do
// all klock needs.
func (a *Reviewer) Warnings(ctx context.Context, pod *corev1.Pod) []string {
	ns, lease := pod.Namespace, pod.Annotations[wrap.AnnotationLease]
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	verbs := Verbs(pod.Annotations[wrap.AnnotationCleanupLease] == "true")
	key := strings.Join(append([]string{ns, sa, lease}, verbs...), "/")
	if v, ok := a.answers.Get(key); ok && time.Now().Before(v.(accessAnswer).expires) {
		return v.(accessAnswer).warnings
	}
	warnings, err := a.review(ctx, ns, sa, lease, verbs)
	if err != nil {
		return []string{fmt.Sprintf("could not check whether service account %s/%s may use Leases: %v", ns, sa, err)}
	}
	if a.leaseAccess {
		if w := a.foreign(ctx, ns, lease); w != "" {
			warnings = append(warnings, w)
		}
	}
	a.answers.Add(key, accessAnswer{warnings: warnings, expires: time.Now().Add(accessTTL)})
	return warnings
}

func (a *Reviewer) review(ctx context.Context, ns, sa, lease string, verbs []string) ([]string, error) {
	allowed := make([]bool, len(verbs))
	errs := make([]error, len(verbs))
	var wg sync.WaitGroup
	for i, verb := range verbs {
		wg.Go(func() {
			attrs := &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: "coordination.k8s.io", Resource: "leases"}
			if verb != "create" && verb != "watch" {
				attrs.Name = lease // create and watch are not checked by name
			}
			review, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{
					User:               "system:serviceaccount:" + ns + ":" + sa,
					Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
					ResourceAttributes: attrs,
				},
			}, metav1.CreateOptions{})
			allowed[i], errs[i] = err == nil && review.Status.Allowed, err
		})
	}
	wg.Wait()

	var missing []string
	for i, verb := range verbs {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if !allowed[i] {
			missing = append(missing, verb)
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	return []string{fmt.Sprintf("service account %s/%s may not %s leases in namespace %s, so klock will fail when the pod runs; grant it with: "+
		"kubectl -n %s create role klock-lease-holder --verb=%s --resource=leases.coordination.k8s.io && "+
		"kubectl -n %s create rolebinding klock-lease-holder-%s --role=klock-lease-holder --serviceaccount=%s:%s",
		ns, sa, strings.Join(missing, ", "), ns, ns, strings.Join(verbs, ","), ns, sa, ns, sa)}, nil
}

// foreign warns when Lease ns/name exists and klock did not create it.
func (a *Reviewer) foreign(ctx context.Context, ns, name string) string {
	if invalidLeaseName(name) != "" {
		return "" // the mutation denies the pod and says why
	}
	lease, err := a.client.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return ""
	}
	if err != nil {
		return fmt.Sprintf("could not check whether klock created Lease %s/%s: %v", ns, name, err)
	}
	if why := foreignLease(lease); why != "" {
		return why + " to the pod's service account by the Lease access controller, and the pod would hold someone else's Lease; " +
			"name a Lease of klock's own in " + wrap.AnnotationLease
	}
	return ""
}

// Verbs are the verbs klock uses on its Lease: it reads and watches
// it, creates it when missing, renews and releases it by update, and
// deletes it with cleanup.
func Verbs(cleanup bool) []string {
	verbs := []string{"get", "create", "update", "watch"}
	if cleanup {
		verbs = append(verbs, "delete")
	}
	return verbs
}

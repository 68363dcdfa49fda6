// Package leaseaccess is about a wrapped pod's permission to use its lock's
// Leases: the lease, the other holder slots of a counting lock and the
// queue of a first-come-first-served one (wrap.LeaseNames). Reviewer asks
// the API server, at admission, whether the pod's service account may get,
// create, update and watch them, for the pod handler to warn when it may
// not. Reconciler (--lease-access) keeps, for each wrapped workload that
// should have it, a Role and RoleBinding that grant its service account
// those Leases and no others.
package leaseaccess

import (
	"cmp"
	"context"
	"fmt"
	"slices"
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
// pod's service account may use its lock's Leases, so that a missing permission is
// a warning at admission rather than a failure when the pod runs. Answers
// are kept for accessTTL: the pods of one workload come in bursts.
type Reviewer struct {
	client  kubernetes.Interface
	answers *lru.Cache // review key → accessAnswer
	// leaseAccess: the Lease access controller runs, and the webhook may
	// get Leases, so Warnings also says when it will not grant the Leases.
	leaseAccess bool
}

// WithLeaseAccess makes Warnings also say when a Lease of the pod's lock
// exists and was not created by klock, for which the Lease access
// controller grants none of the lock's Leases. It reads the Leases, with
// get on leases, which the webhook has when lease access is on.
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

// Warnings says what the pod's service account may not do to the Leases
// of the pod's lock (wrap.LeaseNames: its lease, other holder slots and
// queue), with the kubectl commands that grant it; nothing when it may do
// all klock needs.
func (a *Reviewer) Warnings(ctx context.Context, pod *corev1.Pod) []string {
	s, err := subjectOf(pod)
	if err != nil {
		return nil // the mutation denies the pod and says why
	}
	warnings, err := a.cached(s.key(), func() ([]string, error) {
		warnings, err := a.review(ctx, s.namespace, s.account, s.names, s.verbs)
		if err == nil && a.leaseAccess {
			warnings = append(warnings, a.foreign(ctx, s.namespace, s.names)...)
		}
		return warnings, err
	})
	if err != nil {
		return []string{fmt.Sprintf("could not check whether service account %s/%s may use Leases: %v", s.namespace, s.account, err)}
	}
	return warnings
}

// Denied says what pod's service account may not do to the Leases of the
// pod's lock, "" when it may do all klock needs. The gate controller asks
// before it reserves a lock for a pod: with its own permissions it could
// otherwise hold, for a pod author, Leases the author's pods may not hold.
// Answers are kept as the admission's are: a lock of 100 holders is 300
// reviews, and a pod's author decides how many such pods wait.
func (a *Reviewer) Denied(ctx context.Context, pod *corev1.Pod) (string, error) {
	s, err := subjectOf(pod)
	if err != nil {
		return "", err
	}
	warnings, err := a.cached("denied/"+s.key(), func() ([]string, error) {
		return a.review(ctx, s.namespace, s.account, s.names, s.verbs)
	})
	return strings.Join(warnings, "; "), err
}

// subject is what a review of a pod's Lease permissions asks about: its
// service account, and what klock does to which Leases of its lock.
type subject struct {
	namespace, account string
	names, verbs       []string
}

func subjectOf(pod *corev1.Pod) (subject, error) {
	names, err := wrap.LeaseNames(pod.Annotations)
	if err != nil {
		return subject{}, err
	}
	return subject{
		namespace: pod.Namespace, account: cmp.Or(pod.Spec.ServiceAccountName, "default"),
		names: names, verbs: Verbs(pod.Annotations[wrap.AnnotationCleanupLease] == "true"),
	}, nil
}

func (s subject) key() string {
	return s.namespace + "/" + s.account + "/" + strings.Join(s.names, ",") + "/" + strings.Join(s.verbs, ",")
}

// cached returns the answer kept for key for accessTTL, or computes and
// keeps it; an error is not kept.
func (a *Reviewer) cached(key string, compute func() ([]string, error)) ([]string, error) {
	if v, ok := a.answers.Get(key); ok && time.Now().Before(v.(accessAnswer).expires) {
		return v.(accessAnswer).warnings, nil
	}
	warnings, err := compute()
	if err != nil {
		return nil, err
	}
	a.answers.Add(key, accessAnswer{warnings: warnings, expires: time.Now().Add(accessTTL)})
	return warnings, nil
}

// maxReviews bounds the SubjectAccessReviews, and the Lease reads, one
// pod's admission has in flight: a counting lock of 100 holders has 101
// Leases to check.
const maxReviews = 8

// maxNamesShown bounds the Lease names a warning lists: the API server
// cuts warnings that are long.
const maxNamesShown = 4

// review checks each verb klock needs on all of names: first on every
// Lease of the namespace, which answers for all names at once where the
// account is granted so (a Role without resourceNames, such as
// klock-lease-holder); then, for a verb denied that way, on each name that
// needs it (a Role by resourceNames, as the Lease access controller
// keeps). create is checked without a name, as RBAC checks it, and delete
// on the lease alone, the one Lease klock deletes. watch is checked by
// name: klock watches one Lease at a time, with a metadata.name field
// selector, which the API server authorizes as that name.
func (a *Reviewer) review(ctx context.Context, ns, sa string, names, verbs []string) ([]string, error) {
	type check struct{ verb, name string }
	run := func(checks []check) ([]bool, error) {
		allowed := make([]bool, len(checks))
		errs := make([]error, len(checks))
		limit := make(chan struct{}, maxReviews)
		var wg sync.WaitGroup
		for i, c := range checks {
			limit <- struct{}{}
			wg.Go(func() {
				defer func() { <-limit }()
				review, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
					Spec: authorizationv1.SubjectAccessReviewSpec{
						User:   "system:serviceaccount:" + ns + ":" + sa,
						Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
						ResourceAttributes: &authorizationv1.ResourceAttributes{
							Namespace: ns, Verb: c.verb, Group: "coordination.k8s.io", Resource: "leases", Name: c.name,
						},
					},
				}, metav1.CreateOptions{})
				allowed[i], errs[i] = err == nil && review.Status.Allowed, err
			})
		}
		wg.Wait()
		return allowed, cmp.Or(errs...) // the first: a warning is one line
	}

	var everywhere []check
	for _, verb := range verbs {
		everywhere = append(everywhere, check{verb: verb})
	}
	allowed, err := run(everywhere)
	if err != nil {
		return nil, err
	}
	missing := map[string]bool{} // verb
	var byName []check
	for i, verb := range verbs {
		switch {
		case allowed[i]:
		case verb == "create":
			missing[verb] = true
		case verb == "delete":
			byName = append(byName, check{verb, names[0]})
		default:
			for _, name := range names {
				byName = append(byName, check{verb, name})
			}
		}
	}
	allowed, err = run(byName)
	if err != nil {
		return nil, err
	}
	lacking := map[string]bool{} // Lease name
	for i, c := range byName {
		if !allowed[i] {
			missing[c.verb], lacking[c.name] = true, true
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	var verbsMissing, namesLacking []string
	for _, verb := range verbs {
		if missing[verb] {
			verbsMissing = append(verbsMissing, verb)
		}
	}
	for _, name := range names {
		if lacking[name] {
			namesLacking = append(namesLacking, name)
		}
	}
	which := ""
	if len(namesLacking) > 0 {
		which = " (on the Leases " + list(namesLacking) + " of its lock)"
	}
	// The command grants every Lease of the namespace, so it covers each
	// name a lock uses, whatever its count and order, and every lock the
	// account runs; create cannot be limited by name anyway.
	return []string{fmt.Sprintf("service account %s/%s may not %s leases in namespace %s%s, so klock will fail when the pod runs; grant it with: "+
		"kubectl -n %s create role klock-lease-holder --verb=%s --resource=leases.coordination.k8s.io && "+
		"kubectl -n %s create rolebinding klock-lease-holder-%s --role=klock-lease-holder --serviceaccount=%s:%s",
		ns, sa, strings.Join(verbsMissing, ", "), ns, which, ns, strings.Join(verbs, ","), ns, sa, ns, sa)}, nil
}

// list joins names, the first maxNamesShown of them and how many more.
func list(names []string) string {
	if len(names) <= maxNamesShown {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:maxNamesShown], ", "), len(names)-maxNamesShown)
}

// foreign warns of the Leases ns/names that exist and that klock did not
// create: the Lease access controller grants none of a lock's Leases if
// one of them is such a Lease. At most maxNamesShown are described.
func (a *Reviewer) foreign(ctx context.Context, ns string, names []string) []string {
	found := make([]string, len(names))
	limit := make(chan struct{}, maxReviews)
	var wg sync.WaitGroup
	for i, name := range names {
		if invalidLeaseName(name) != "" {
			continue // the mutation denies the pod and says why
		}
		limit <- struct{}{}
		wg.Go(func() {
			defer func() { <-limit }()
			lease, err := a.client.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				found[i] = fmt.Sprintf("could not check whether klock created Lease %s/%s: %v", ns, name, err)
			default:
				if why := foreignLease(lease); why != "" {
					others := ""
					if len(names) > 1 {
						others = ", nor are the other Leases of its lock (" + list(names) + ")"
					}
					found[i] = why + " to the pod's service account by the Lease access controller" + others +
						", and the pod would hold someone else's Lease; name a lease in " + wrap.AnnotationLease + " whose Leases are klock's own"
				}
			}
		})
	}
	wg.Wait()
	found = slices.DeleteFunc(found, func(w string) bool { return w == "" })
	if len(found) > maxNamesShown {
		found = append(found[:maxNamesShown], fmt.Sprintf("%d more Leases of the pod's lock exist and were not created by klock, or could not be read", len(found)-maxNamesShown))
	}
	return found
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

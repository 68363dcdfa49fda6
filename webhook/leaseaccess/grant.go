package leaseaccess

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/klock-io/klock/klock"

	"github.com/klock-io/klock/webhook/policy"
)

// invalidLeaseName says why name cannot be a Lease's, or "" when it can.
// An empty name would grant resourceNames [""], which RBAC reads as no
// name at all.
func invalidLeaseName(name string) string {
	if name == "" {
		return "the Lease name is empty"
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Sprintf("%q is not a Lease name: %s", name, strings.Join(errs, "; "))
	}
	return ""
}

// foreignLease says why an existing Lease may not be granted: klock did
// not create it, so it is someone else's (an operator's leader election
// Lease, say), and a workload naming it must not get update or delete on
// it. It returns "" for a Lease klock created.
func foreignLease(lease metav1.Object) string {
	if lease.GetLabels()[klock.ManagedByLabel] == klock.ManagedByValue {
		return ""
	}
	return fmt.Sprintf("Lease %s/%s exists and was not created by klock (it lacks the label %s=%s), so it is not granted",
		lease.GetNamespace(), lease.GetName(), klock.ManagedByLabel, klock.ManagedByValue)
}

// leaseGrant is what a workload's Role and RoleBinding grant: verbs on the
// named Leases, and create, to its service accounts.
type leaseGrant struct {
	serviceAccounts []string
	leases          []string
	verbs           []string // on the named Leases
}

// merge is the union of g and o, either of which may be nil.
func (g *leaseGrant) merge(o *leaseGrant) *leaseGrant {
	if g == nil || o == nil {
		return cmp.Or(g, o)
	}
	return &leaseGrant{serviceAccounts: union(g.serviceAccounts, o.serviceAccounts), leases: union(g.leases, o.leases), verbs: union(g.verbs, o.verbs)}
}

// union is the sorted set of a's and b's elements.
func union(a, b []string) []string {
	return slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(a), b...))))
}

func (g *leaseGrant) rules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"}, ResourceNames: g.leases, Verbs: g.verbs},
		// RBAC checks create before the name is known: it cannot be
		// limited to one.
		{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"}, Verbs: []string{"create"}},
	}
}

// accessName names a workload's Role and RoleBinding:
// klock-lease-<kind>-<name>, shortened with a hash when too long.
func accessName(w policy.Workload) string {
	name := "klock-lease-" + strings.ToLower(w.Kind) + "-" + w.Name
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:240] + "-" + hex.EncodeToString(sum[:])[:12]
}

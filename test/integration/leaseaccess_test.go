package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/klock"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook/leaseaccess"
	"github.com/klock-io/klock/webhook/server"
	"github.com/klock-io/klock/webhook/wrap"
)

// A workload names its Lease itself: the controller must not grant it a
// Lease that someone else created (an operator's leader election Lease),
// nor a name that is none.
func TestLeaseAccessRefusesLeasesNotKlocks(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	leases := cp.Client.CoordinationV1().Leases(ns)
	for name, labels := range map[string]map[string]string{
		"operator-leader": {"app": "operator"},
		"klock-made":      {klock.ManagedByLabel: klock.ManagedByValue},
	} {
		if _, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	startWebhookUntil(t, func(o *server.Options) { o.LeaseAccess = leaseaccess.ModeAll })

	cronJob := func(name, lease string) *batchv1.CronJob {
		t.Helper()
		cj := &batchv1.CronJob{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{wrap.AnnotationLease: lease}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{container("app", "work")}, RestartPolicy: corev1.RestartPolicyOnFailure},
			}}}},
		}
		cj, err := cp.Client.BatchV1().CronJobs(ns).Create(ctx, cj, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cj
	}
	role := func(workload string) (granted []string, found bool) {
		r, err := cp.Client.RbacV1().Roles(ns).Get(ctx, "klock-lease-cronjob-"+workload, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, false
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, rule := range r.Rules {
			granted = append(granted, rule.ResourceNames...)
		}
		return granted, true
	}
	noRole := func(t *testing.T, workload string) {
		t.Helper()
		// The controller has acted on the workloads created before the
		// granted one by the time that one has its Role; a little longer
		// for the kinds' queues, which are separate, to be sure.
		for range 10 {
			if granted, found := role(workload); found {
				t.Fatalf("Role for CronJob %s grants %q", workload, granted)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := cp.Client.RbacV1().RoleBindings(ns).Get(ctx, "klock-lease-cronjob-"+workload, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("RoleBinding for CronJob %s: %v, want none", workload, err)
		}
	}

	cronJob("takeover", "operator-leader")
	cronJob("invalid", "Not_A_Lease")
	cronJob("empty", "")
	cronJob("mine", "klock-made")
	framework.Eventually(t, 30*time.Second, "CronJob mine granted Lease klock-made", func() bool {
		granted, _ := role("mine")
		return slices.Equal(granted, []string{"klock-made", "klock-made-queue"})
	})

	t.Run("a Lease not created by klock is not granted", func(t *testing.T) { noRole(t, "takeover") })
	t.Run("an invalid name is not granted", func(t *testing.T) { noRole(t, "invalid") })
	t.Run("an empty name is not granted", func(t *testing.T) { noRole(t, "empty") })

	t.Run("a granted name is revoked once someone else creates that Lease", func(t *testing.T) {
		later := cronJob("later", "not-there-yet")
		framework.Eventually(t, 30*time.Second, "CronJob later granted Lease not-there-yet", func() bool {
			granted, _ := role("later")
			return slices.Equal(granted, []string{"not-there-yet", "not-there-yet-queue"})
		})
		if _, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "not-there-yet"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Any change to the workload checks again.
		metav1.SetMetaDataLabel(&later.ObjectMeta, "touched", "yes")
		if _, err := cp.Client.BatchV1().CronJobs(ns).Update(ctx, later, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		framework.Eventually(t, 30*time.Second, "the Role and RoleBinding of CronJob later deleted", func() bool {
			_, found := role("later")
			_, err := cp.Client.RbacV1().RoleBindings(ns).Get(ctx, "klock-lease-cronjob-later", metav1.GetOptions{})
			return !found && apierrors.IsNotFound(err)
		})
	})
}

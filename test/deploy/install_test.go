package deploy

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/kube"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/controller-runtime/pkg/client"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook"
	"github.com/klock-io/klock/webhook/gate"
	"github.com/klock-io/klock/webhook/server"
	"github.com/klock-io/klock/webhook/wrap"
)

// A real helm install and upgrade of the chart into the control plane, in
// self-managed TLS mode. No node runs its pods here, so the webhook runs in
// this process with the arguments of the installed Deployment and the
// Secret its rotator fills; the installed webhook configuration, pointed at
// it, then wraps an annotated pod.
func TestHelmInstallUpgradeAndAdmit(t *testing.T) {
	ctx := context.Background()
	const ns = "klock-release"
	flags := genericclioptions.NewConfigFlags(false)
	kubeconfig, namespace := cp.Kubeconfig, ns
	flags.KubeConfig, flags.Namespace = &kubeconfig, &namespace
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, ns, "secret"); err != nil {
		t.Fatal(err)
	}
	chart, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}

	// The namespace the webhook may grant Leases and let gated pods
	// through in, and no other.
	apps, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "apps-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	install := action.NewInstall(cfg)
	install.ReleaseName, install.Namespace, install.CreateNamespace = "klock", ns, true
	install.WaitStrategy = kube.HookOnlyStrategy // no node runs the pods
	values := map[string]any{"tls": map[string]any{"mode": "selfManaged"}, "image": map[string]any{"tag": "test"}, "leaseAccess": "policy", "leaseAccessNamespaces": []any{apps.Name},
		"gatingNamespaces": []any{apps.Name}}
	if _, err := install.RunWithContext(ctx, chart, values); err != nil {
		t.Fatalf("helm install: %v", err)
	}
	t.Cleanup(func() {
		uninstall := action.NewUninstall(cfg)
		uninstall.WaitStrategy = kube.HookOnlyStrategy
		if _, err := uninstall.Run("klock"); err != nil {
			t.Errorf("helm uninstall: %v", err)
		}
		if _, err := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "klock", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the webhook configuration outlived helm uninstall (err %v)", err)
		}
	})

	upgrade := action.NewUpgrade(cfg)
	upgrade.Namespace, upgrade.WaitStrategy = ns, kube.HookOnlyStrategy
	upgrade.ResetThenReuseValues = true
	if _, err := upgrade.RunWithContext(ctx, "klock", chart, map[string]any{"webhook": map[string]any{"replicas": 3}}); err != nil {
		t.Fatalf("helm upgrade: %v", err)
	}
	dep, err := cp.Client.AppsV1().Deployments(ns).Get(ctx, "klock-webhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *dep.Spec.Replicas != 3 || dep.Spec.Template.Spec.Containers[0].Image != "ghcr.io/klock-io/klock:test" {
		t.Errorf("after the upgrade: %d replicas of %s, want 3 of the tag given at install", *dep.Spec.Replicas, dep.Spec.Template.Spec.Containers[0].Image)
	}

	// The webhook, as the release's pods run it and with its service
	// account's permissions, plus the name it is reached by here.
	o := server.NewOptions()
	fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(dep.Spec.Template.Spec.Containers[0].Args); err != nil {
		t.Fatalf("the Deployment's args: %v", err)
	}
	o.DNSNames = append(o.DNSNames, "localhost")
	o.Port, o.CertDir, o.MetricsAddr, o.ProbeAddr = framework.Port(t), t.TempDir(), "0", "0"
	cp.RunWebhookAs(t, o, ns+"/"+dep.Spec.Template.Spec.Volumes[0].Secret.SecretName, ns+"/"+dep.Spec.Template.Spec.ServiceAccountName)

	// The installed configuration, sent here instead of to the Service.
	mwcs := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	framework.Eventually(t, 60*time.Second, "the webhook to inject its CA", func() bool {
		mwc, err := mwcs.Get(ctx, "klock", metav1.GetOptions{})
		return err == nil && len(mwc.Webhooks[0].ClientConfig.CABundle) > 0
	})
	mwc, err := mwcs.Get(ctx, "klock", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var patch []map[string]any
	for i, w := range mwc.Webhooks {
		url := "https://localhost:" + strconv.Itoa(o.Port) + *w.ClientConfig.Service.Path
		patch = append(patch,
			map[string]any{"op": "remove", "path": "/webhooks/" + strconv.Itoa(i) + "/clientConfig/service"},
			map[string]any{"op": "add", "path": "/webhooks/" + strconv.Itoa(i) + "/clientConfig/url", "value": url})
	}
	data, _ := json.Marshal(patch)
	if _, err := mwcs.Patch(ctx, "klock", types.JSONPatchType, data, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly", Annotations: map[string]string{wrap.AnnotationLease: "nightly"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox:1", Command: []string{"true"}}}},
	}
	var got *corev1.Pod
	framework.Eventually(t, 60*time.Second, "the installed webhook to admit the pod", func() bool {
		got, err = cp.Client.CoreV1().Pods(apps.Name).Create(ctx, pod, metav1.CreateOptions{})
		return err == nil // refused while the webhook is not serving yet
	})
	if len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].Image != "ghcr.io/klock-io/klock:test" || got.Spec.Containers[0].Command[0] != "/klock-bin/klock" {
		t.Errorf("the pod was not wrapped with the release's image: %+v", got.Spec)
	}

	// A policy, with the release's RBAC: an unannotated pod it selects is
	// wrapped, and a CronJob it selects gets a Role for its Lease.
	policies, err := client.New(cp.Config, client.Options{Scheme: webhook.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	policy := &klockv1alpha1.ClusterLockPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "install-test"},
		Spec: klockv1alpha1.ClusterLockPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": apps.Name}},
			GrantLeaseAccess:  true,
		},
	}
	if err := policies.Create(ctx, policy); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = policies.Delete(ctx, policy) })
	framework.Eventually(t, 60*time.Second, "the policy Ready", func() bool {
		return policies.Get(ctx, client.ObjectKeyFromObject(policy), policy) == nil &&
			meta.IsStatusConditionTrue(policy.Status.Conditions, klockv1alpha1.ConditionReady)
	})
	plain := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "plain"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox:1", Command: []string{"true"}}}},
	}
	if got, err = cp.Client.CoreV1().Pods(apps.Name).Create(ctx, plain, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[wrap.AnnotationLease] != "pod-plain" || got.Spec.Containers[0].Command[0] != "/klock-bin/klock" {
		t.Errorf("the policy's pod was not wrapped: annotations %v", got.Annotations)
	}
	cronJob := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: "report"},
		Spec: batchv1.CronJobSpec{Schedule: "0 3 * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox:1", Command: []string{"true"}}}, RestartPolicy: corev1.RestartPolicyNever},
		}}}},
	}
	if _, err := cp.Client.BatchV1().CronJobs(apps.Name).Create(ctx, cronJob, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, 60*time.Second, "a Role for the CronJob's Lease", func() bool {
		role, err := cp.Client.RbacV1().Roles(apps.Name).Get(ctx, "klock-lease-cronjob-report", metav1.GetOptions{})
		return err == nil && len(role.Rules) == 2 && slices.Equal(role.Rules[0].ResourceNames, []string{"cronjob-report", "cronjob-report-queue"})
	})

	// What the release lets the webhook do: Leases and Roles, and pods'
	// gates, in the namespace it was given, and nowhere else.
	sa := "system:serviceaccount:" + ns + ":" + dep.Spec.Template.Spec.ServiceAccountName
	may := func(namespace, verb, group, resource string) bool {
		t.Helper()
		review, err := cp.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: namespace, Verb: verb, Group: group, Resource: resource},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return review.Status.Allowed
	}
	for _, check := range []struct{ verb, group, resource string }{{"create", "coordination.k8s.io", "leases"}, {"delete", "coordination.k8s.io", "leases"}, {"create", "rbac.authorization.k8s.io", "roles"}, {"get", "", "pods"},
		{"patch", "", "pods"}, {"update", "coordination.k8s.io", "leases"}, {"create", "", "events"}, {"create", "events.k8s.io", "events"}} {
		if !may(apps.Name, check.verb, check.group, check.resource) {
			t.Errorf("the webhook may not %s %s in %s, which leaseAccessNamespaces and gatingNamespaces list", check.verb, check.resource, apps.Name)
		}
		for _, other := range []string{"kube-system", "default"} {
			if may(other, check.verb, check.group, check.resource) {
				t.Errorf("the webhook may %s %s in %s, which leaseAccessNamespaces and gatingNamespaces do not list", check.verb, check.resource, other)
			}
		}
	}
	if !may("kube-system", "watch", "rbac.authorization.k8s.io", "roles") {
		t.Error("the webhook may not watch Roles everywhere, as its informers do")
	}
	// The gate controller's informer lists and watches pods where it acts
	// only (--gating-namespaces), and so may nowhere else.
	for _, verb := range []string{"list", "watch"} {
		if !may(apps.Name, verb, "", "pods") {
			t.Errorf("the webhook may not %s pods in %s, which gatingNamespaces lists", verb, apps.Name)
		}
		for _, other := range []string{"kube-system", "default", ""} {
			if may(other, verb, "", "pods") {
				t.Errorf("the webhook may %s pods in %q, which gatingNamespaces does not list", verb, other)
			}
		}
	}

	// In gatingNamespaces a pod that asks to be gated is, and the gate
	// controller, its informer narrowed to them, sees it and acts on it
	// (whether it may reserve the lock or not, it says so in an event).
	// The policy names its lease.
	gated := plain.DeepCopy()
	gated.Name, gated.Annotations = "gated", map[string]string{wrap.AnnotationGate: "true"}
	if got, err = cp.Client.CoreV1().Pods(apps.Name).Create(ctx, gated, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !wrap.Gated(got) {
		t.Errorf("a pod asking to be gated in %s, which gatingNamespaces lists, was not: gates %v", apps.Name, got.Spec.SchedulingGates)
	}
	framework.Eventually(t, 60*time.Second, "the gate controller to act on the gated pod", func() bool {
		events, err := cp.Client.EventsV1().Events(apps.Name).List(ctx, metav1.ListOptions{})
		return err == nil && slices.ContainsFunc(events.Items, func(e eventsv1.Event) bool {
			return e.Regarding.Name == gated.Name && slices.Contains([]string{gate.ReasonWaiting, gate.ReasonReserved, gate.ReasonNotReserved}, e.Reason)
		})
	})
	// Outside them, it is denied: nothing would let it through there.
	gated.Annotations[wrap.AnnotationLease] = "nightly"
	_, err = cp.Client.CoreV1().Pods("default").Create(ctx, gated, metav1.CreateOptions{})
	if err == nil {
		_ = cp.Client.CoreV1().Pods("default").Delete(ctx, gated.Name, metav1.DeleteOptions{})
	}
	if want := `the gate controller does not act in namespace "default"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a pod asking to be gated in default: error %v, want one containing %q", err, want)
	}
}

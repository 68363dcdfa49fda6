package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook/wrap"
)

// installWrappedPodsPolicy creates deploy/base's ValidatingAdmissionPolicy
// and its binding, as users install them.
func installWrappedPodsPolicy(t *testing.T) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(framework.RepoRoot(), "deploy", "base", "wrappedpods.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	var policy admissionregistrationv1.ValidatingAdmissionPolicy
	var binding admissionregistrationv1.ValidatingAdmissionPolicyBinding
	if len(docs) != 2 || yaml.UnmarshalStrict([]byte(docs[0]), &policy) != nil || yaml.UnmarshalStrict([]byte(docs[1]), &binding) != nil {
		t.Fatalf("deploy/base/wrappedpods.yaml is not a policy and its binding")
	}
	ctx := context.Background()
	api := cp.Client.AdmissionregistrationV1()
	if _, err := api.ValidatingAdmissionPolicies().Create(ctx, &policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ValidatingAdmissionPolicyBindings().Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = api.ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
		_ = api.ValidatingAdmissionPolicies().Delete(context.Background(), policy.Name, metav1.DeleteOptions{})
	})
}

// A wrapped pod's installer image and klock's volume stay as admitted: the
// webhook sees pods only at creation, and either could otherwise put
// another binary where the wrapped container runs klock.
func TestWrappedPodsStayWrapped(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	startWebhook(t)
	grantLeases(t, ns, "default")
	installWrappedPodsPolicy(t)
	pods := cp.Client.CoreV1().Pods(ns)

	in := pod("wrapped", map[string]string{wrap.AnnotationLease: "nightly"}, container("app", "work"))
	in.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "example.com/hold"}} // not started: its init containers may still change
	created, err := pods.Create(ctx, in, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Spec.Containers[0].Command[0], wrap.BinaryPath) {
		t.Fatalf("not wrapped: %q", created.Spec.Containers[0].Command)
	}

	// The policy takes effect a moment after it is created; until then a
	// change goes through, so each try changes the image again.
	var lastErr error
	tries := 0
	framework.Eventually(t, 30*time.Second, "the installer's image change refused", func() bool {
		p, err := pods.Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		tries++
		p.Spec.InitContainers[0].Image = fmt.Sprintf("evil/klock:v%d", tries)
		_, lastErr = pods.Update(ctx, p, metav1.UpdateOptions{})
		return lastErr != nil
	})
	if !strings.Contains(lastErr.Error(), "the image of klock's init container klock-install cannot change") {
		t.Errorf("refused with %v", lastErr)
	}

	// The pod's author may edit its annotations: taking klock's away first
	// changes nothing.
	p, err := pods.Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(p.Annotations, wrap.AnnotationInjected)
	if p, err = pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	p.Spec.InitContainers[0].Image = "evil/klock:unannotated"
	if _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Errorf("the installer's image change, after the annotation was removed: %v", err)
	}

	p, err = pods.Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.Containers[0].Image = "busybox:2"
	if _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Errorf("the wrapped container's own image may change: %v", err)
	}

	p, err = pods.Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: "debug", Image: "busybox:1", Command: []string{"sh"},
		VolumeMounts: []corev1.VolumeMount{{Name: wrap.VolumeName, MountPath: "/x"}},
	}}}
	_, err = pods.UpdateEphemeralContainers(ctx, p.Name, p, metav1.UpdateOptions{})
	if err == nil || !strings.Contains(err.Error(), "an ephemeral container cannot mount klock's volume klock-bin") {
		t.Errorf("an ephemeral container mounting klock's volume: %v", err)
	}
	p.Spec.EphemeralContainers[0].VolumeMounts = nil
	if _, err := pods.UpdateEphemeralContainers(ctx, p.Name, p, metav1.UpdateOptions{}); err != nil {
		t.Errorf("an ephemeral container without klock's volume: %v", err)
	}
}

package integration

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/klock-io/klock/webhook/wrap"
)

// prefixer is a webhook that wraps the first container's argv in a binary
// of its own, as secret injectors do: command [/vault/vault-env], args the
// argv it found.
func prefixer(t *testing.T) *httptest.Server {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var pod corev1.Pod
		if err := json.Unmarshal(review.Request.Object.Raw, &pod); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c := pod.Spec.Containers[0]
		patch, _ := json.Marshal([]map[string]any{
			{"op": "replace", "path": "/spec/containers/0/command", "value": []string{"/vault/vault-env"}},
			{"op": "add", "path": "/spec/containers/0/args", "value": append(slices.Clone(c.Command), c.Args...)},
		})
		review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true, Patch: patch, PatchType: ptr.To(admissionv1.PatchTypeJSONPatch)}
		review.Request = nil
		_ = json.NewEncoder(w).Encode(review)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Another webhook that wraps commands, called after klock (configurations
// are called in the order of their names), leaves the pod running its
// binary in front of klock; the API server calls klock again
// (reinvocationPolicy IfNeeded), and klock goes back in front, so that the
// other binary runs under the lock.
func TestReinvocationWithAnotherWrapper(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	startWebhook(t)
	grantLeases(t, ns, "default")

	srv := prefixer(t)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	selector := map[string]string{"klock-test/prefix": "yes"}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "zz-test-prefixer"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "prefix.test.klock.io",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: ptr.To(srv.URL + "/prefix"), CABundle: ca},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			ObjectSelector:          &metav1.LabelSelector{MatchLabels: selector},
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
		}},
	}
	if _, err := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), mwc.Name, metav1.DeleteOptions{})
	})

	in := pod("prefixed", map[string]string{wrap.AnnotationLease: "nightly"}, container("app", "work", "--now"))
	in.Labels = selector
	// The API server picks up a new webhook configuration within a moment:
	// a pod the prefixer did not see yet is deleted and made again.
	var got *corev1.Pod
	eventually(t, 30*time.Second, "a pod admitted through both webhooks", func() bool {
		var err error
		if got, err = cp.Client.CoreV1().Pods(ns).Create(ctx, in, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c := got.Spec.Containers[0]
		if slices.Contains(append(slices.Clone(c.Command), c.Args...), "/vault/vault-env") {
			return true
		}
		if err := cp.Client.CoreV1().Pods(ns).Delete(ctx, in.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
			t.Fatal(err)
		}
		return false
	})
	c := got.Spec.Containers[0]
	want := []string{wrap.BinaryPath, "--lease=nightly", "--", "/vault/vault-env", "work", "--now"}
	if !slices.Equal(c.Command, want) || len(c.Args) > 0 {
		t.Errorf("command %q, args %q; want command %q", c.Command, c.Args, want)
	}
}

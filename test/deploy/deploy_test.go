// Package deploy tests the manifests users install: rendered as users
// render them, and checked by the real API server.
package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/klock-io/klock/test/framework"
)

var cp *framework.ControlPlane

func TestMain(m *testing.M) {
	os.Exit(func() int {
		crds, err := framework.CertManagerCRDs()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if cp, err = framework.StartWith(framework.Options{CRDs: []string{crds}}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer cp.Stop()
		return m.Run()
	}())
}

// Kustomize builds a kustomization (relative to the repository) as
// `kubectl apply -k` would.
func Kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	resmap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(framework.RepoRoot(), dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range resmap.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, decode(t, data))
	}
	return objs
}

// decode reads an object from JSON the way client-go does, with int64
// numbers, so that objects from kustomize and from helm compare equal.
func decode(t *testing.T, data []byte) *unstructured.Unstructured {
	t.Helper()
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	return obj
}

// dryRunApply fails the test for every object the API server rejects, and
// for every warning it gives.
func dryRunApply(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, err := range cp.DryRunApply(context.Background(), objs, func(w string) { t.Errorf("API server warning: %s", w) }) {
		t.Error(err)
	}
}

func TestKustomizeDefaultIsValid(t *testing.T) {
	objs := Kustomize(t, "deploy/default")
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	for _, want := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
		"PodDisruptionBudget", "MutatingWebhookConfiguration", "Issuer", "Certificate"} {
		if kinds[want] == 0 {
			t.Errorf("deploy/default renders no %s (it renders %v)", want, kinds)
		}
	}
	dryRunApply(t, objs)
}

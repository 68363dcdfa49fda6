// Package deploy tests the manifests users install: rendered as users
// render them, and checked by the real API server.
package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/klock-io/klock/test/framework"
)

// certManagerVersion is the cert-manager whose CRDs the manifests are
// checked against; its Go module ships them as plain YAML.
const certManagerVersion = "v1.21.2"

var cp *framework.ControlPlane

func TestMain(m *testing.M) {
	os.Exit(func() int {
		crds, err := certManagerCRDs()
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

// certManagerCRDs returns the directory of cert-manager's CRDs in the Go
// module cache, downloading the module through the module proxy if needed.
func certManagerCRDs() (string, error) {
	out, err := exec.Command("go", "mod", "download", "-json", "github.com/cert-manager/cert-manager@"+certManagerVersion).Output()
	if err != nil {
		return "", fmt.Errorf("downloading cert-manager %s for its CRDs: %w", certManagerVersion, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return "", err
	}
	return filepath.Join(mod.Dir, "deploy", "crds"), nil
}

// render builds a kustomization as `kubectl apply -k` would.
func render(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	resmap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(framework.RepoRoot(), dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range resmap.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// dryRunApply sends each object to the API server as a server-side apply
// with dryRun=All: the API server validates it completely, CRDs and
// admission included, and stores nothing.
func dryRunApply(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	// The API server's warnings fail the test too: among them, what the
	// restricted Pod Security level of the namespace says about the
	// Deployment's pods.
	config := rest.CopyConfig(cp.Config)
	config.WarningHandlerWithContext = warningsAsErrors{t}
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		if gvk.Kind == "Namespace" {
			// Namespaced objects can only be dry-run in a namespace that exists.
			// It is created for real, with its labels (Pod Security).
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: obj.GetName(), Labels: obj.GetLabels()}}
			if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			continue
		}
		mapping, err := mapper.RESTMapping(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind}, gvk.Version)
		if err != nil {
			t.Errorf("%s %s: the API server does not serve this kind: %v", gvk, obj.GetName(), err)
			continue
		}
		data, err := json.Marshal(obj.Object)
		if err != nil {
			t.Fatal(err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if obj.GetNamespace() != "" {
			ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		force := true
		if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager: "klock-test", DryRun: []string{metav1.DryRunAll}, Force: &force,
		}); err != nil {
			t.Errorf("%s %s/%s: %v", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
	}
}

type warningsAsErrors struct{ t *testing.T }

func (w warningsAsErrors) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.t.Errorf("API server warning: %s", text)
}

func TestKustomizeDefaultIsValid(t *testing.T) {
	objs := render(t, "deploy/default")
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

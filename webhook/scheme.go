package webhook

import (
	"errors"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
)

// Scheme knows the kinds the webhook decodes and reads.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(s), klockv1alpha1.AddToScheme(s)); err != nil {
		panic(err) // a programming error
	}
	return s
}

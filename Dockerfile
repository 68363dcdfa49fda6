# syntax=docker/dockerfile:1
# The klock image: /klock (copied into wrapped pods by `klock install`) and
# /klock-webhook (the admission webhook, the entrypoint). test/image builds
# the same layout in Go, and a test checks that both agree.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS TARGETARCH VERSION=dev
WORKDIR /src
# Dependencies first, in a layer of their own that survives code changes.
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY internal/ internal/
COPY klock/ klock/
COPY webhook/ webhook/
ENV CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH
RUN go build -trimpath -ldflags "-s -w -X github.com/klock-io/klock/internal/version.Version=${VERSION}" -o /out/klock ./cmd/klock \
 && go build -trimpath -ldflags "-s -w -X github.com/klock-io/klock/internal/version.Version=${VERSION}" -o /out/klock-webhook ./cmd/klock-webhook

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/klock /klock
COPY --from=build /out/klock-webhook /klock-webhook
USER 65532:65532
ENTRYPOINT ["/klock-webhook"]

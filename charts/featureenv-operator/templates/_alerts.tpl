{{/*
The operator's alerts, as Prometheus rule groups (prometheusrule.yaml filters out
`disabledAlerts` and adds `alertLabels`). Every expression is scoped to this
installation's series by `featureenv-operator.metricsSelector`.

Two replicas run, one acts: both serve /metrics and answer scrapes, but only the
leader reconciles, fills `featureenv_pool_members` and calls AWS (the stand-by's
gauges stay at 0 and its counters never appear). So gauges are aggregated with `max`
(the leader's value, also across a hand-over), counters with `sum`, and "is anyone
acting" is read from the AWS calls the leader's inventory poll makes at least every
`config.slowPollInterval`.

Text inside {{`...`}} is for Prometheus' own templating, not Helm's.
*/}}

{{- define "featureenv-operator.metricsSelector" -}}
{{- .Values.metrics.prometheusRule.selector | default (printf "job=\"%s-metrics\",namespace=\"%s\"" (include "featureenv-operator.fullname" .) .Release.Namespace) }}
{{- end }}

{{- define "featureenv-operator.alerts" -}}
{{- $s := include "featureenv-operator.metricsSelector" . -}}
{{- $p90 := .Values.metrics.prometheusRule.timeToReadyP90Seconds -}}
groups:
  - name: featureenv-operator.availability
    rules:
      - alert: FeatureEnvOperatorDown
        expr: |
          sum by (job, namespace) (up{ {{- $s -}} }) == 0
          or
          absent(up{ {{- $s -}} })
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: No featureenv-operator replica is up.
          description: >-
            No replica of featureenv-operator in {{`{{ $labels.namespace }}`}} has answered a
            scrape for 5 minutes. Nothing provisions environments, enforces their TTLs
            or deletes their AWS resources.
      - alert: FeatureEnvTwoLeaders
        expr: |
          sum by (job, namespace) (featureenv_leader{ {{- $s -}} }) > 1
        for: 1m
        labels:
          severity: critical
        annotations:
          summary: Two featureenv-operator replicas both say they lead.
          description: >-
            {{`{{ $value }}`}} replicas in {{`{{ $labels.namespace }}`}} report
            featureenv_leader = 1. Fencing should make this impossible for longer than a
            scrape interval (a leader stops at its renew deadline, before the Lease can
            change hands); check the replicas' clocks and logs, and the Lease.
      - alert: FeatureEnvNoActingLeader
        expr: |
          sum by (job, namespace) (up{ {{- $s -}} }) > 0
          unless on (job, namespace)
          sum by (job, namespace) (rate(featureenv_aws_calls_total{ {{- $s -}} }[10m])) > 0
        for: 10m
        labels:
          severity: critical
        annotations:
          summary: featureenv-operator replicas are up but none is acting.
          description: >-
            Replicas in {{`{{ $labels.namespace }}`}} answer scrapes, but none has called AWS
            for 20 minutes. The leader's inventory poll calls AWS at least every
            slow poll interval (stand-bys never do), so no replica holds the Lease or
            the leader's controllers are stuck. Check the Lease, the replicas' logs
            ("waiting for leadership", "lost leadership") and their access to the
            Kubernetes API. (Assumes config.slowPollInterval well under 10 minutes.)
      {{- if gt (int .Values.replicaCount) 1 }}
      - alert: FeatureEnvReplicasDown
        expr: |
          sum by (job, namespace) (up{ {{- $s -}} }) < {{ .Values.replicaCount }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: Fewer featureenv-operator replicas are up than configured.
          description: >-
            {{`{{ $value }}`}} of {{ .Values.replicaCount }} replicas in {{`{{ $labels.namespace }}`}}
            answer scrapes: if the leader fails, no stand-by takes over.
      {{- end }}
      - alert: FeatureEnvInventoryFailing
        expr: |
          sum by (namespace, category) (rate(featureenv_reconcile_errors_total{ {{- $s -}},controller="inventory"}[5m])) > 0
        for: 10m
        labels:
          severity: critical
        annotations:
          summary: The operator cannot describe its AWS resources.
          description: >-
            The inventory poll in {{`{{ $labels.namespace }}`}} has been failing with
            {{`{{ $labels.category }}`}} for 10 minutes. Once its description is older than
            the staleness bound the leader turns unready and environments stop
            progressing. Check AWS credentials (IRSA), the IAM policy and throttling.
  - name: featureenv-operator.environments
    rules:
      - alert: FeatureEnvProvisioningStalled
        expr: |
          max by (namespace) (featureenv_environments{ {{- $s -}},phase="Provisioning"}) > 0
          unless on (namespace)
          sum by (namespace) (increase(featureenv_time_to_ready_seconds_count{ {{- $s -}} }[30m])) > 0
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: Environments are provisioning but none becomes Ready.
          description: >-
            {{`{{ $value }}`}} environments in {{`{{ $labels.namespace }}`}} are Provisioning and
            none has become Ready for 45 minutes. Look at their Ready condition
            (kubectl get featureenvs -A), the pools and AWS errors.
      - alert: FeatureEnvFailedGrowing
        expr: |
          max by (namespace) (featureenv_environments{ {{- $s -}},phase="Failed"})
          - max by (namespace) (featureenv_environments{ {{- $s -}},phase="Failed"} offset 1h)
          >= 3
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: Environments keep failing.
          description: >-
            {{`{{ $value }}`}} more environments are Failed than an hour ago
            ({{`{{ $labels.namespace }}`}}). Their Ready condition and Events say why.
      - alert: FeatureEnvSlowToReady
        expr: |
          histogram_quantile(0.9, sum by (namespace, le) (rate(featureenv_time_to_ready_seconds_bucket{ {{- $s -}} }[1h]))) > {{ $p90 }}
          and on (namespace)
          sum by (namespace) (increase(featureenv_time_to_ready_seconds_count{ {{- $s -}} }[1h])) >= 3
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: Environments take long to become Ready.
          description: >-
            90% of the environments that became Ready in the last hour
            ({{`{{ $labels.namespace }}`}}) took up to {{`{{ $value | humanizeDuration }}`}} from
            creation, over the {{ $p90 }}s target. A cold pool (a database restore
            takes about ten minutes) or slow instance boots are the usual causes.
      - alert: FeatureEnvPoolCold
        expr: |
          max by (namespace, pool) (featureenv_pool_members{ {{- $s -}},state="warm"}) == 0
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: An RdsPool has no warm database.
          description: >-
            RdsPool {{`{{ $labels.pool }}`}} ({{`{{ $labels.namespace }}`}}) has had no warm database
            for 15 minutes: each new environment waits for a restore. Check the pool's
            status (maxSize reached, source snapshot missing) and RDS errors.
  - name: featureenv-operator.aws
    rules:
      - alert: FeatureEnvAwsThrottled
        expr: |
          sum by (namespace, service) (rate(featureenv_aws_failed_attempts_total{ {{- $s -}},reason="throttled"}[5m])) > 0.1
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: AWS is throttling the operator.
          description: >-
            {{`{{ $labels.service }}`}} throttles {{`{{ $value | humanize }}`}} requests a second
            ({{`{{ $labels.namespace }}`}}), retries included. The account's API rate is
            shared with everything else in it; consider a longer
            config.slowPollInterval.
      - alert: FeatureEnvAwsCallsFailing
        expr: |
          sum by (namespace, service, outcome) (rate(featureenv_aws_calls_total{ {{- $s -}},outcome!~"ok|NotFound|AlreadyExists"}[10m]))
          / ignoring (outcome) group_left
          sum by (namespace, service) (rate(featureenv_aws_calls_total{ {{- $s -}} }[10m]))
          > 0.05
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: AWS calls fail.
          description: >-
            {{`{{ $value | humanizePercentage }}`}} of {{`{{ $labels.service }}`}} calls end in
            {{`{{ $labels.outcome }}`}} after the SDK's retries ({{`{{ $labels.namespace }}`}}).
            NotFound and AlreadyExists are left out: idempotent cleanup and creation
            expect them.
  - name: featureenv-operator.controllers
    rules:
      - alert: FeatureEnvReconcileErrors
        expr: |
          sum by (namespace, controller) (rate(featureenv_reconcile_errors_total{ {{- $s -}},controller!="inventory",category!="CleanupPending"}[15m]))
          /
          sum by (namespace, controller) (rate(featureenv_reconciles_total{ {{- $s -}} }[15m]))
          > 0.1
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: Reconciles fail.
          description: >-
            {{`{{ $value | humanizePercentage }}`}} of {{`{{ $labels.controller }}`}} reconciles failed
            over 15 minutes ({{`{{ $labels.namespace }}`}}; CleanupPending, a wait for AWS,
            left out). featureenv_reconcile_errors_total says which categories.
      - alert: FeatureEnvJanitorRemovedOrphans
        expr: |
          sum by (namespace, resource) (increase(featureenv_janitor_removals_total{ {{- $s -}} }[1h])) > 0
          or
          sum by (namespace, resource) (featureenv_janitor_removals_total{ {{- $s -}} } unless featureenv_janitor_removals_total{ {{- $s -}} } offset 1h)
        labels:
          severity: info
        annotations:
          summary: The janitor removed orphaned AWS resources.
          description: >-
            The janitor removed orphaned {{`{{ $labels.resource }}`}}s in the last hour
            ({{`{{ $labels.namespace }}`}}): resources tagged for this installation that no
            environment or pool owned for the whole grace period. Rare after crashes;
            regular removals mean something leaks.
{{- end }}

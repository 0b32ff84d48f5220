#!/bin/bash
# incident-assessment.sh: the playbook's Phase 1, Step 2 script, adapted ONLY in its URLs so that it
# points at the labcheck sandbox instead of production. Changes, and nothing else:
#   https://api.llm-research-lab.io      -> $API_URL
#   http://prometheus:9090               -> $PROMETHEUS_URL
#   http://localhost:9090/metrics        -> $API_URL/metrics (the application's own metrics)
#   kubectl reads the sandbox's kubeconfig through $KUBECONFIG (exported by bench/run.py)
# Like the original it has no timeouts: under an outage it hangs until something gives up.

echo "=== INCIDENT ASSESSMENT ==="
echo "Timestamp: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo ""

# Check API health
echo "--- API Health ---"
curl -s -w "\nHTTP Status: %{http_code}\nResponse Time: %{time_total}s\n" \
  ${API_URL}/health

# Check error rates
echo "--- Error Rate (last 5m) ---"
curl -s "${PROMETHEUS_URL}/api/v1/query?query=rate(http_requests_total{status=~\"5..\"}[5m])" \
  | jq '.data.result[] | {endpoint: .metric.path, rate: .value[1]}'

# Check latency
echo "--- P95 Latency (last 5m) ---"
curl -s "${PROMETHEUS_URL}/api/v1/query?query=histogram_quantile(0.95,rate(http_request_duration_seconds_bucket[5m]))" \
  | jq '.data.result[] | {endpoint: .metric.path, latency: .value[1]}'

# Check pod status
echo "--- Pod Status ---"
kubectl get pods -n llm-research -l app=llm-research-api -o wide

# Check recent events
echo "--- Recent Events ---"
kubectl get events -n llm-research --sort-by=.lastTimestamp | tail -20

# Check database connections
echo "--- Database Connections ---"
curl -s ${API_URL}/metrics | grep -E "^db_pool_connections"

SELECT service_name,
       attributes['http.route'] AS route,
       approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ns) / 1e6 AS p99_ms,
       count(*) AS spans
FROM spans
WHERE span_kind = 'SERVER'
GROUP BY service_name, attributes['http.route']
HAVING approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ns) > 500000000
   AND count(*) >= 20

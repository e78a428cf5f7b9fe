// A metric's direction, from `result.quality.directions` ("higher" or "lower" is
// better; results stored before directions existed have none, and all their
// metrics were higher-is-better), and a drop: always the change for the worse.
export function direction(quality, metric) {
  return quality?.directions?.[metric] ?? "higher";
}

// How much worse `value` is than `reference` for `metric` (negative when better).
export function drop(quality, metric, reference, value) {
  return direction(quality, metric) === "lower" ? value - reference : reference - value;
}

export function metricLabel(quality, metric) {
  return `${metric} (${direction(quality, metric)} is better)`;
}

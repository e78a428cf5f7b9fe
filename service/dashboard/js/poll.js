// Polls `tick` while a view is shown: every `base` ms while the tab is visible
// (every `idle` ms when `tick` says nothing is moving); while the tab is hidden
// it backs off exponentially (4, 8, 16… times `base`, up to `max` ms), and polls
// once more right away when the tab comes back.
export function poller(tick, { base = 1000, idle = 5000, max = 60_000 } = {}) {
  let timer = null;
  let hiddenDelay = base;
  let stopped = false;

  async function run() {
    timer = null;
    let busy = true;
    try { busy = await tick(); } catch { /* shown by the view; try again later */ }
    if (stopped) return;
    let delay = busy ? base : idle;
    if (document.hidden) {
      hiddenDelay = Math.min(max, hiddenDelay * (hiddenDelay === base ? 4 : 2));
      delay = Math.max(delay, hiddenDelay);
    } else {
      hiddenDelay = base;
    }
    timer = setTimeout(run, delay);
  }

  function onVisible() {
    if (!document.hidden && timer !== null) {
      clearTimeout(timer);
      run();
    }
  }

  document.addEventListener("visibilitychange", onVisible);
  run();
  return () => {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  };
}

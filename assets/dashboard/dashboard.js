// The dashboard of veris-jobs serve: charts of the rollups, from /api/telemetry/report,
// and the run history, from /api/jobs/runs. The secret is kept in this tab's session
// storage and sent as a bearer header; it is never put in a URL or a cookie.
'use strict';

(() => {
  const SECRET_KEY = 'veris-jobs.secret';
  const TOP = 10;
  const COLORS = ['#0969da', '#cf222e', '#1a7f37', '#9a6700', '#8250df', '#bf3989',
    '#0a7d8c', '#953800', '#57606a', '#116329', '#999999'];
  const $ = (id) => document.getElementById(id);
  const charts = [];
  let lastRange = null;

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function secret() { return sessionStorage.getItem(SECRET_KEY); }

  async function api(path) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${secret()}` },
      cache: 'no-store',
    });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      throw new HttpError(response.status, message);
    }
    return response.json();
  }

  // ---- dates: the browser's own calendar, as YYYY-MM-DD

  function iso(date) {
    const pad = (n) => String(n).padStart(2, '0');
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  }
  function addDays(text, days) {
    const [y, m, d] = text.split('-').map(Number);
    return iso(new Date(y, m - 1, d + days));
  }
  function daysBetween(start, end) {
    const [a, b] = [start, end].map((t) => { const [y, m, d] = t.split('-').map(Number); return Date.UTC(y, m - 1, d); });
    return Math.round((b - a) / 86400000) + 1;
  }
  function seconds(text) {
    const [y, m, d] = text.split('-').map(Number);
    return Date.UTC(y, m - 1, d) / 1000;
  }

  function chosenRange() {
    const kind = $('range').value;
    const today = iso(new Date());
    // Today and the 48 hours before it are read by hour.
    if (kind === 'today') return { start: today, end: today, hourly: true };
    if (kind === '48h') return { start: addDays(today, -1), end: today, hourly: true };
    if (kind === 'custom') {
      const start = $('start').value;
      const end = $('end').value || start;
      if (!start) return null;
      return start <= end ? { start, end } : { start: end, end: start };
    }
    const end = addDays(iso(new Date()), -1);
    return { start: addDays(end, -(Number(kind) - 1)), end };
  }

  // ---- states

  function show(status, isError) {
    const box = $('status');
    box.textContent = status || '';
    box.hidden = !status;
    box.classList.toggle('error', Boolean(isError));
  }

  function signedOut(message) {
    sessionStorage.removeItem(SECRET_KEY);
    $('dashboard').hidden = true;
    $('runs-section').hidden = true;
    $('sign-out').hidden = true;
    $('sign-in').hidden = false;
    show(message, Boolean(message));
    $('secret').focus();
  }

  function failed(error) {
    if (error instanceof HttpError && error.status === 401) {
      signedOut('That secret was refused (401). Enter READ_SECRET or CRON_SECRET as the server has it.');
    } else if (error instanceof HttpError && error.status === 503) {
      show('The database cannot be reached (503): the rollups cannot be read now. Try again when it is up.', true);
    } else {
      show(`The data could not be loaded: ${error.message}`, true);
    }
  }

  // ---- loading

  async function load() {
    const range = chosenRange();
    if (!range) { show('Choose a first day.', true); return; }
    const by = range.hourly ? 'hour' : $('by').value;
    $('by').disabled = Boolean(range.hourly);
    const days = daysBetween(range.start, range.end);
    const previous = { start: addDays(range.start, -days), end: addDays(range.start, -1) };
    const query = (r, grouping) => `api/telemetry/report?startDate=${r.start}&endDate=${r.end}&by=${grouping}`;
    show('Loading…');
    try {
      const [series, whole, before, runs] = await Promise.all([
        api(query(range, by)),
        api(query(range, 'range')),
        api(query(previous, 'range')),
        api('api/jobs/runs?limit=20'),
      ]);
      lastRange = range;
      $('sign-in').hidden = true;
      $('sign-out').hidden = false;
      $('dashboard').hidden = false;
      $('runs-section').hidden = false;
      drawCharts(series);
      const period = whole.periods[0];
      drawSoFar(whole.periods[0]);
      drawTable(period, before.periods[0], range, previous);
      fillEvents(period);
      drawRuns(runs.runs);
      if (period.events.length === 0) {
        show(`No rollups between ${range.start} and ${range.end}. Run veris-jobs telemetry-daily (or veris-jobs demo) to write some.`);
      } else {
        show('');
      }
      document.body.dataset.loaded = `${range.start}..${range.end}/${by}`;
    } catch (error) {
      failed(error);
    }
  }

  // ---- charts

  function topEvents(report) {
    const totals = new Map();
    for (const period of report.periods) {
      for (const event of period.events) totals.set(event.event, (totals.get(event.event) || 0) + event.count);
    }
    return [...totals.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, TOP).map(([name]) => name);
  }

  // A period's start as seconds: a date (YYYY-MM-DD) or, by hour, an RFC 3339 instant.
  function start(period) {
    return period.start.length > 10 ? Date.parse(period.start) / 1000 : seconds(period.start);
  }

  // HH:MM of an RFC 3339 instant, in the browser's time.
  function clock(instant) {
    const at = new Date(instant);
    return `${String(at.getHours()).padStart(2, '0')}:${String(at.getMinutes()).padStart(2, '0')}`;
  }

  function drawSoFar(period) {
    const note = $('so-far');
    note.hidden = !period.partial;
    note.textContent = period.partial ? `Today is not over: its figures are so far, as of ${clock(period.asOf)}.` : '';
  }

  function drawCharts(report) {
    while (charts.length) charts.pop().destroy();
    const xs = report.periods.map(start);
    const top = topEvents(report);
    const find = (period, name) => period.events.find((e) => e.event === name);
    // A period not over yet is drawn on a dashed line of its own, not as a fall of
    // the finished ones: their lines stop before it.
    const done = (p, value) => (p.partial ? null : value);
    const counts = top.map((name) => report.periods.map((p) => done(p, (find(p, name) || { count: 0 }).count)));
    const other = report.periods.map((p) => done(p, p.events.filter((e) => !top.includes(e.event)).reduce((sum, e) => sum + e.count, 0)));
    const soFarCount = report.periods.map((p) => (p.partial ? p.total.count : null));
    const users = top.map((name) => report.periods.map((p) => { const e = find(p, name); return done(p, e ? e.uniqueUsers : 0); }));
    const all = report.periods.map((p) => done(p, p.total.uniqueUsers));
    const soFarUsers = report.periods.map((p) => (p.partial ? p.total.uniqueUsers : null));
    const partial = report.periods.find((p) => p.partial);
    const soFar = partial ? [`all events so far, as of ${clock(partial.asOf)}`] : [];
    const series = (names) => [{}].concat(names.map((name, i) => (name.includes('so far')
      ? { label: name, stroke: '#57606a', width: 2, dash: [6, 4], points: { show: true, size: 8 } }
      : { label: name, stroke: COLORS[i % COLORS.length], width: 2 })));
    const extra = (values) => (partial ? [values] : []);
    charts.push(chart($('events-chart'), 'Events', series(top.concat(['other'], soFar)), [xs].concat(counts, [other], extra(soFarCount))));
    charts.push(chart($('users-chart'), 'Unique users', series(top.concat(['all events'], soFar)), [xs].concat(users, [all], extra(soFarUsers))));
  }

  function chart(element, title, series, data) {
    element.textContent = '';
    const width = Math.max(element.clientWidth, 280);
    return new uPlot({
      width,
      height: 260,
      series,
      scales: { x: { time: true } },
      axes: [{}, { size: 60 }],
      legend: { live: false },
    }, data, element);
  }

  window.addEventListener('resize', () => {
    for (const c of charts) c.setSize({ width: Math.max(c.root.parentElement.clientWidth, 280), height: 260 });
  });

  // ---- the events table

  function change(now, before) {
    if (now == null || before == null) return { text: '–', cls: '' };
    if (before === 0) return now === 0 ? { text: '0%', cls: '' } : { text: 'new', cls: 'up' };
    const pct = ((now - before) / before) * 100;
    const rounded = Math.abs(pct) < 10 ? pct.toFixed(1) : pct.toFixed(0);
    return { text: `${pct > 0 ? '+' : ''}${rounded}%`, cls: pct > 0 ? 'up' : pct < 0 ? 'down' : '' };
  }

  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function drawTable(period, before, range, previous) {
    const soFar = period.partial ? ` (so far, as of ${clock(period.asOf)})` : '';
    $('events-caption').textContent = `${range.start} to ${range.end}${soFar}, against ${previous.start} to ${previous.end}`;
    const body = $('events-table').tBodies[0];
    body.textContent = '';
    const earlier = new Map(before.events.map((e) => [e.event, e]));
    for (const event of period.events.concat([{ event: 'All events', count: period.total.count, uniqueUsers: period.total.uniqueUsers, total: true }])) {
      const row = body.insertRow();
      const prior = event.total ? { count: before.total.count, uniqueUsers: before.total.uniqueUsers } : (earlier.get(event.event) || { count: 0, uniqueUsers: 0 });
      const th = document.createElement('th');
      th.scope = 'row';
      th.textContent = event.event;
      row.appendChild(th);
      cell(row, event.count.toLocaleString(), 'num');
      const c = change(event.count, prior.count);
      cell(row, c.text, `num ${c.cls}`);
      cell(row, event.uniqueUsers == null ? 'n/a' : event.uniqueUsers.toLocaleString(), 'num');
      const u = change(event.uniqueUsers, prior.uniqueUsers);
      cell(row, u.text, `num ${u.cls}`);
    }
  }

  // ---- metadata of one event

  function fillEvents(period) {
    const select = $('event');
    const keep = select.value;
    select.textContent = '';
    for (const event of period.events) select.add(new Option(event.event, event.event));
    if (period.events.some((e) => e.event === keep)) select.value = keep;
    drawMetadata(period);
    select.onchange = () => drawMetadata(period);
  }

  function drawMetadata(period) {
    const box = $('metadata');
    box.textContent = '';
    const event = period.events.find((e) => e.event === $('event').value);
    if (!event) return;
    for (const [key, stats] of Object.entries(event.meta)) {
      if (key === '$dropped_keys') continue;
      const part = document.createElement('div');
      part.className = 'key';
      const title = document.createElement('h3');
      title.textContent = `${key} (${stats.n.toLocaleString()} events)`;
      part.appendChild(title);
      if (stats.values) {
        const entries = Object.entries(stats.values).sort((a, b) => b[1] - a[1]);
        if (stats.other) entries.push(['(other)', stats.other]);
        const max = Math.max(1, ...entries.map(([, n]) => n));
        for (const [value, n] of entries) {
          const bar = document.createElement('div');
          bar.className = 'bar';
          const label = document.createElement('span');
          label.textContent = value;
          label.title = value;
          const track = document.createElement('span');
          track.className = 'bar-track';
          const fill = document.createElement('span');
          fill.className = 'bar-fill';
          fill.style.display = 'block';
          fill.style.width = `${(100 * n) / max}%`;
          track.appendChild(fill);
          const count = document.createElement('span');
          count.textContent = n.toLocaleString();
          bar.append(label, track, count);
          part.appendChild(bar);
        }
      }
      if ('sum' in stats) {
        const numbers = document.createElement('p');
        const fmt = (x) => (x == null ? 'n/a' : Number(x).toLocaleString());
        const percentiles = ['p50', 'p90', 'p99'].filter((p) => p in stats).map((p) => ` · ${p} ${fmt(stats[p])}`).join('');
        numbers.textContent = `sum ${fmt(stats.sum)} · min ${fmt(stats.min)} · max ${fmt(stats.max)}${percentiles}`;
        part.appendChild(numbers);
      }
      box.appendChild(part);
    }
  }

  // ---- runs

  function drawRuns(runs) {
    const body = $('runs').tBodies[0];
    body.textContent = '';
    if (runs.length === 0) {
      const row = body.insertRow();
      const td = cell(row, 'No runs recorded yet.');
      td.colSpan = 7;
      return;
    }
    for (const run of runs) {
      const row = body.insertRow();
      cell(row, String(run.id));
      cell(row, run.job);
      cell(row, run.trigger);
      cell(row, run.status, `status-${run.status}`);
      cell(row, run.startedAt.replace('T', ' ').replace('Z', ''));
      cell(row, run.startDate === run.endDate ? run.startDate : `${run.startDate} to ${run.endDate}`);
      cell(row, `${run.daysDone}/${run.daysTotal}`, 'num');
      const failedDays = run.summary ? run.summary.failedDays : [];
      for (const day of failedDays) {
        const detail = body.insertRow();
        const td = cell(detail, `${day.date}: ${day.error}`, 'failed-day');
        td.colSpan = 7;
      }
    }
  }

  // ---- wiring

  document.addEventListener('DOMContentLoaded', () => {
    $('sign-in-form').addEventListener('submit', (e) => {
      e.preventDefault();
      sessionStorage.setItem(SECRET_KEY, $('secret').value);
      $('secret').value = '';
      load();
    });
    $('sign-out').addEventListener('click', () => signedOut(''));
    $('controls').addEventListener('submit', (e) => { e.preventDefault(); load(); });
    $('range').addEventListener('change', () => {
      const custom = $('range').value === 'custom';
      $('custom-dates').hidden = !custom;
      if (custom && lastRange && !$('start').value) {
        $('start').value = lastRange.start;
        $('end').value = lastRange.end;
      }
      if (!custom) load();
    });
    $('by').addEventListener('change', load);
    if (secret()) load(); else signedOut('');
  });
})();
